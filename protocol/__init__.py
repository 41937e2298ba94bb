"""Schemas shared by the client and the services. Depends on pydantic only."""

from protocol.adapters import AdapterRecord
from protocol.datasets import DatasetRecord, PreferencePair
from protocol.errors import PROBLEM_CONTENT_TYPE, Problem
from protocol.jobs import (
    QWEN_PROJECTIONS,
    DpoJobSpec,
    DpoSpec,
    JobEvent,
    JobList,
    JobProgress,
    JobRecord,
    JobSpec,
    JobState,
    LoraSpec,
    MergeJobSpec,
)
from protocol.names import NAME_RULE, SafeName, check_name
from protocol.trainer_api import AdapterList, TrainerHealth

__all__ = [
    "NAME_RULE",
    "PROBLEM_CONTENT_TYPE",
    "QWEN_PROJECTIONS",
    "AdapterList",
    "AdapterRecord",
    "DatasetRecord",
    "DpoJobSpec",
    "DpoSpec",
    "JobEvent",
    "JobList",
    "JobProgress",
    "JobRecord",
    "JobSpec",
    "JobState",
    "LoraSpec",
    "MergeJobSpec",
    "PreferencePair",
    "Problem",
    "SafeName",
    "TrainerHealth",
    "check_name",
]
