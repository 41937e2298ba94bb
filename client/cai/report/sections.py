"""Report sections about results: the summary header, evaluation, training curves, lengths."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from cai.evaluation.records import ALL
from cai.pipeline.heldout import INSTRUCTION_TYPES
from cai.report import html as h
from cai.report import svg
from cai.report.inputs import RunInputs
from cai.report.judge_section import judge_note, judge_sentence, judge_warning

TRAIN_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("loss", "DPO loss", False),
    ("rewards/margins", "Reward margin (chosen - rejected)", False),
    ("rewards/accuracies", "Reward accuracy (train batches)", True),
)
# Responses that grew this much longer than the base while scoring better deserve a look:
# prior work mistook a length effect for an improvement (notes/prior-art.md).
LENGTH_WARNING_RATIO = 1.3


def header(inputs: RunInputs) -> str:
    trained = inputs.trained
    base = inputs.baseline.summary if inputs.baseline else None
    last = next((s for s in reversed(trained) if s.summary is not None), None)
    facts = [
        ("Base model", escape(inputs.base_model or "unknown")),
        ("Stages trained", str(len([s for s in trained if s.train or s.summary]))),
        ("Held-out set", escape(inputs.heldout_version or "—")),
        ("Built", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    fact_html = "".join(
        f'<div class="fact"><span class="label">{k}</span><span class="value">{v}</span></div>'
        for k, v in facts
    )
    cards: list[str] = []

    def card(title: str, value: str, sub: str, card_id: str) -> None:
        cards.append(
            f'<div class="card" id="{card_id}"><div class="card-title">{escape(title)}</div>'
            f'<div class="card-value">{value}</div><div class="card-sub">{sub}</div></div>'
        )

    if last is not None and last.summary is not None:
        s = last.summary
        label = h.stage_name(last.stage)
        rules = s.rules.get(ALL)
        card(
            f"Rule success · {label}",
            h.pct(rules.rate if rules else None),
            f"base {h.pct(base.rules[ALL].rate) if base and ALL in base.rules else '—'} · "
            + h.comparison(s.vs_base, "rules"),
            "card-rules",
        )
        judge = s.judge.get(ALL)
        card(
            f"Judge success · {label}",
            h.pct(judge.rate if judge else None),
            f"base {h.pct(base.judge[ALL].rate) if base and ALL in base.judge else '—'} · "
            + h.comparison(s.vs_base, "judge")
            + f"<br>{judge_note(inputs)}",
            "card-judge",
        )
        pa = s.pair_accuracy
        card(
            f"Held-out pair accuracy · {label}",
            h.pct(pa.accuracy if pa else None),
            (
                f"implicit reward &gt; 0 on {pa.correct}/{pa.n} pairs · base prefers chosen "
                f"{h.pct(pa.reference_preference)}"
                if pa
                else "no test pairs scored"
            ),
            "card-pairs",
        )
        base_len = base.length_chars.mean if base else None
        stage_len = s.length_chars.mean
        ratio = stage_len / base_len if base_len and stage_len else None
        warn = ratio is not None and ratio >= LENGTH_WARNING_RATIO
        card(
            f"Mean response length · {label}",
            f"{h.num(stage_len, 0)} chars",
            (f"base {h.num(base_len, 0)} chars" + (f" · ×{ratio:.2f}" if ratio else ""))
            + (' · <span class="warn">check for a length artifact</span>' if warn else ""),
            "card-length",
        )
    elif base is not None:
        rules = base.rules.get(ALL)
        judge = base.judge.get(ALL)
        card(
            "Base rule success", h.pct(rules.rate if rules else None), "baseline only", "card-rules"
        )
        card(
            "Base judge success",
            h.pct(judge.rate if judge else None),
            f"baseline only<br>{judge_note(inputs)}",
            "card-judge",
        )
        card(
            "Base mean length",
            f"{h.num(base.length_chars.mean, 0)} chars",
            f"p90 {h.num(base.length_chars.p90, 0)}",
            "card-length",
        )
    else:
        card("Evaluation", "—", "no evaluation yet", "card-none")

    missing = ""
    if inputs.missing:
        items = "".join(f"<code>{escape(m)}</code> " for m in inputs.missing)
        missing = f'<p class="missing">Not in the run folder yet: {items}</p>'
    return (
        f'<header><div class="eyebrow">Constitutional-AI bootstrap · run report</div>'
        f"<h1>{escape(inputs.name)}</h1>"
        f'<div class="facts">{fact_html}</div>'
        f'<div class="cards">{"".join(cards)}</div>{judge_warning(inputs)}{missing}</header>'
    )


def evaluation(inputs: RunInputs) -> str:
    summaries = h.summaries(inputs)
    if not summaries:
        return h.section("evaluation", "Evaluation", '<p class="muted">No evaluation yet.</p>')
    groups = [*INSTRUCTION_TYPES, ALL]
    judged_by = judge_sentence(inputs)
    charts = []
    for verdict, title in (
        ("rules", "Rule success by instruction type"),
        ("judge", "Judge success by instruction type"),
    ):
        series = []
        for stage, summary in summaries:
            rates = summary.rules if verdict == "rules" else summary.judge
            bars = [
                svg.Bar(t.rate, t.low, t.high, f"{t.successes}/{t.n}")
                if (t := rates.get(g)) is not None and t.rate is not None
                else svg.Bar(None)
                for g in groups
            ]
            series.append(
                svg.BarSeries(h.stage_name(stage.stage), svg.stage_color(stage.stage), bars)
            )
        charts.append(
            svg.bar_chart(
                f"chart-eval-{verdict}",
                title,
                groups,
                series,
                description="Bars: success rate; whiskers: 95% Wilson score interval."
                + (f" {judged_by}" if verdict == "judge" else ""),
            )
            # Under the judge chart, in the figure: how far the judge itself is trusted.
            + (f"<figcaption>{judge_note(inputs)}</figcaption>" if verdict == "judge" else "")
        )
    pair_stages = [(s, m.pair_accuracy) for s, m in summaries if m.pair_accuracy is not None]
    if pair_stages:
        groups_pa = [h.stage_name(stage.stage) for stage, _ in pair_stages]
        accuracies = [pa for _, pa in pair_stages if pa is not None]
        charts.append(
            svg.bar_chart(
                "chart-pair-accuracy",
                "Held-out pair accuracy",
                groups_pa,
                [
                    svg.BarSeries(
                        "implicit reward > 0",
                        svg.PALETTE[1],
                        [
                            svg.Bar(
                                pa.accuracy,
                                pa.interval.low,
                                pa.interval.high,
                                f"{pa.correct}/{pa.n}",
                            )
                            for pa in accuracies
                        ],
                    ),
                    svg.BarSeries(
                        "stage prefers chosen",
                        svg.PALETTE[5],
                        [svg.Bar(pa.policy_preference) for pa in accuracies],
                    ),
                    svg.BarSeries(
                        "base prefers chosen",
                        svg.PALETTE[0],
                        [svg.Bar(pa.reference_preference) for pa in accuracies],
                    ),
                ],
                y_label="share of pairs",
                description="implicit reward: beta*(log-ratio chosen - log-ratio rejected) against "
                "the reference; 'prefers chosen': log p(chosen) > log p(rejected).",
            )
        )
    reward_series = [
        svg.HistSeries(
            h.stage_name(s.stage), svg.stage_color(s.stage), [p.reward for p in s.pair_scores]
        )
        for s in inputs.stages
        if s.pair_scores and s.stage > 0
    ]
    if reward_series:
        charts.append(
            svg.histogram(
                "chart-pair-rewards",
                "Implicit reward per held-out pair",
                reward_series,
                x_label="beta * (log-ratio chosen − log-ratio rejected)",
            )
        )
    rows = []
    note = judge_note(inputs)
    for stage, s in summaries:
        accuracy = s.pair_accuracy
        rows.append(
            [
                f'<span class="swatch" style="background:{svg.stage_color(stage.stage)}"></span>'
                f"{escape(h.stage_name(stage.stage))}",
                f"<code>{escape(s.model)}</code>",
                h.interval(s.rules.get(ALL)),
                f"{h.interval(s.judge.get(ALL))}<br>{note}",
                h.comparison(s.vs_base, "rules"),
                f"{h.comparison(s.vs_base, 'judge')}<br>{note}"
                if s.vs_base
                else h.comparison(None, "judge"),
                h.comparison(s.vs_previous, "rules"),
                (
                    f"{h.interval(accuracy.interval)}<br><span class='muted'>ties "
                    f"{accuracy.ties} · margin {h.num(accuracy.mean_margin, 3)}</span>"
                    if accuracy
                    else '<span class="muted">—</span>'
                ),
            ]
        )
    table = h.table(
        [
            "Stage",
            "Model",
            "Rules (all)",
            "Judge (all)",
            "Rules vs base",
            "Judge vs base",
            "Rules vs previous",
            "Pair accuracy",
        ],
        rows,
        "table-eval",
    )
    intro = (
        '<p class="note">Success rates with 95% Wilson intervals over the held-out set; '
        "changes are paired McNemar exact tests on the same instructions (+ gained, − lost). "
        f"Rule checks and the model judge are reported apart. {escape(judged_by)}</p>"
    )
    body = judge_warning(inputs) + intro + h.grid(charts) + table
    return h.section("evaluation", "Evaluation on the held-out set", body)


def training(inputs: RunInputs) -> str:
    stages = [s for s in inputs.trained if s.train]
    if not stages:
        return h.section("training", "Training", '<p class="muted">No training events yet.</p>')
    charts = []
    for key, title, percent in TRAIN_METRICS:
        series = [
            svg.LineSeries(
                h.stage_name(s.stage),
                svg.stage_color(s.stage),
                [(p.step, p.metrics[key]) for p in s.train if key in p.metrics],
            )
            for s in stages
        ]
        chart_id = "chart-train-" + key.replace("/", "-")
        charts.append(
            svg.line_chart(
                chart_id,
                title,
                series,
                y_label=key,
                percent=percent,
                y_range=(0.0, 1.0) if percent else None,
                width=440,
            )
        )
    rows = []
    for s in stages:
        last = s.train[-1]
        rows.append(
            [
                escape(h.stage_name(s.stage)),
                f"<code>{escape(s.model or '—')}</code>",
                str(last.step) + (f" / {last.total_steps}" if last.total_steps else ""),
                h.num(last.metrics.get("loss"), 4),
                h.num(last.metrics.get("rewards/margins"), 4),
                h.pct(last.metrics.get("rewards/accuracies")),
            ]
        )
    table = h.table(
        ["Stage", "Adapter", "Steps", "Final loss", "Final margin", "Final accuracy"],
        rows,
        "table-train",
    )
    return h.section("training", "Training curves", h.grid(charts, columns=3) + table)


def lengths(inputs: RunInputs) -> str:
    stages = [s for s in inputs.stages if s.records]
    if not stages:
        return h.section("lengths", "Response lengths", '<p class="muted">No responses yet.</p>')
    chars = [
        svg.HistSeries(
            h.stage_name(s.stage),
            svg.stage_color(s.stage),
            [len(r.response) for r in s.records if r.status == "ok"],
        )
        for s in stages
    ]
    tokens = [
        svg.HistSeries(
            h.stage_name(s.stage),
            svg.stage_color(s.stage),
            [r.response_tokens for r in s.records if r.response_tokens is not None],
        )
        for s in stages
    ]
    charts = [
        svg.histogram(
            "chart-length-chars", "Response length (characters)", chars, x_label="characters"
        ),
        svg.histogram("chart-length-tokens", "Response length (tokens)", tokens, x_label="tokens"),
    ]
    rows = []
    for s in stages:
        if s.summary is None:
            continue
        c, t = s.summary.length_chars, s.summary.length_tokens
        rows.append(
            [
                escape(h.stage_name(s.stage)),
                h.num(c.mean, 0),
                h.num(c.median, 0),
                h.num(c.p90, 0),
                h.num(t.mean, 1),
                h.num(t.p90, 0),
                f"{s.summary.truncated}/{s.summary.n}",
            ]
        )
    table = h.table(
        ["Stage", "Mean chars", "Median", "p90", "Mean tokens", "p90 tokens", "Hit max_tokens"],
        rows,
        "table-lengths",
    )
    note = (
        '<p class="note">A gain that comes with much longer answers may be a length effect '
        "rather than better answers; the rule checks never look at length.</p>"
    )
    return h.section("lengths", "Response lengths", note + h.grid(charts) + table)


__all__ = ["evaluation", "header", "lengths", "training"]
