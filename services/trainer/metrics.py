"""Prometheus metrics, read from SQLite at scrape time (so they survive restarts and every
worker process agrees). One registry per app: two apps in one process never collide."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.trainer.store import Store


class TrainerCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("cai_trainer_jobs", "Jobs by state.", labels=["state"])
        for state, count in sorted(self.store.count_by_state().items()):
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "cai_trainer_queue_depth", "Jobs waiting to run.", value=self.store.queue_depth()
        )
        running = self.store.list_jobs_running_progress()
        yield GaugeMetricFamily(
            "cai_trainer_training_tokens_per_second",
            "Training throughput of the running jobs (latest progress report), summed.",
            value=sum(p.tokens_per_second or 0.0 for p in running),
        )
        yield GaugeMetricFamily(
            "cai_trainer_adapters",
            "Registered adapters and merged models.",
            value=len(self.store.list_adapters()),
        )


def build_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrainerCollector(store))
    return registry
