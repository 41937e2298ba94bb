"""The report's judge check: its own section, and the note every judge-based number carries.

A judge rate means something only if the judge can tell a good answer from a bad one. The
run's `judge_check.json` (cai.evaluation.judge_check) measured that on hand-checkable cases;
every judge figure in the header and the evaluation table shows that agreement beside it,
and an untrustworthy judge puts a warning over them.
"""

from __future__ import annotations

from html import escape

from cai.evaluation.judge_cases import CORRUPTIONS
from cai.evaluation.records import ALL, JudgeCheck
from cai.report import html as h
from cai.report import svg
from cai.report.inputs import RunInputs

WARNING = "the judge is no better than chance here: judge figures are not evidence"
KIND_LABELS = {
    "truncated": "truncated: cut mid-sentence",
    "repeated": "repeated: first sentence looped",
    "off_topic": "off topic: another case's answer",
    "wrong_fact": "wrong fact: key fact changed",
}


def _agreement_text(check: JudgeCheck) -> str:
    ci = check.agreement.interval
    return f"judge agreement {h.pct(ci.rate)} [{h.pct(ci.low)}, {h.pct(ci.high)}]"


def judge_sentence(inputs: RunInputs) -> str:
    """Plain text for a section's note: the judge's agreement and what it means."""
    check = inputs.judge_check
    if check is None:
        return "The judge was not checked on hand-checkable cases."
    meaning = "" if check.trustworthy else ": no better than chance, so not evidence"
    return f"{_agreement_text(check).capitalize()} on hand-checkable cases{meaning}."


def judge_note(inputs: RunInputs) -> str:
    """A short note for beside a judge number: how far the judge itself can be trusted."""
    check = inputs.judge_check
    if check is None:
        return (
            '<span class="judge-note muted" title="no judge_check.json in the run folder">'
            "judge unchecked</span>"
        )
    cls = "judge-note muted" if check.trustworthy else "judge-note warn"
    title = f"on {check.agreement.pairs} good/corrupted pairs of {check.cases_version}"
    return f'<span class="{cls}" title="{escape(title)}">{_agreement_text(check)}</span>'


def judge_warning(inputs: RunInputs) -> str:
    """The warning over judge figures when the judge is not better than chance (else '')."""
    check = inputs.judge_check
    if check is None or check.trustworthy:
        return ""
    return (
        f'<p class="warn judge-warning">⚠ {escape(WARNING)} ({_agreement_text(check)} on '
        f'hand-checkable cases; see <a href="#judge">Judge check</a>).</p>'
    )


def _margin(value: float, good: float | None) -> str:
    # A corrupted answer the judge rates at least as high as the good one is a miss.
    missed = good is not None and value >= good
    return f'<span class="{"warn" if missed else "muted"}">{value:+.2f}</span>'


def _cases_table(check: JudgeCheck) -> str:
    rows = []
    for result in check.results:
        good = result.answer("good")
        rows.append(
            [
                f"<code>{escape(result.case_id)}</code>",
                f'<div class="instruction">{escape(result.instruction)}</div>',
                f"<strong>{good.margin:+.2f}</strong>",
                *(_margin(result.answer(kind).margin, good.margin) for kind in CORRUPTIONS),
            ]
        )
    return h.table(["Case", "Instruction", "good", *CORRUPTIONS], rows, "table-judge-cases")


def judge_check(inputs: RunInputs) -> str:
    check = inputs.judge_check
    if check is None:
        return h.section(
            "judge",
            "Judge check",
            '<p class="muted">No judge check in this run folder: the run predates it or ran '
            "without the judge (<code>evaluation.judge: false</code>). Judge figures here are "
            "unmeasured.</p>",
        )
    # Untrustworthy: the warning above says so in the report's words; the verdict adds why.
    intro = (
        f'<p id="judge-verdict"><strong>{escape(check.verdict)}</strong></p>'
        f'<p class="note">The judge <code>{escape(check.judge_model)}</code> '
        f"(<code>{escape(check.template)}</code>, method {escape(check.method)}, "
        f"swap {'on' if check.swap else 'off'}, threshold {check.threshold:g}) was asked, as "
        f"the pipeline asks it, about {check.cases} hand-checkable cases of "
        f"<code>{escape(check.cases_version)}</code>: each correct answer and one corrupted "
        "copy per kind. Agreement: the good answer gets the higher margin (a tie counts "
        "half); accuracy: the good answer judged ok and the corrupted one not ok. The judge "
        "is trusted when the agreement's 95% Wilson lower bound is above 50%.</p>"
    )
    groups = [*CORRUPTIONS, ALL]
    agreements = [*(check.agreement_by_kind.get(k) for k in CORRUPTIONS), check.agreement]
    accuracies = [*(check.accuracy_by_kind.get(k) for k in CORRUPTIONS), check.accuracy]
    chart = svg.bar_chart(
        "chart-judge-check",
        "Judge on hand-checkable cases",
        groups,
        [
            svg.BarSeries(
                "agreement (good margin higher)",
                svg.PALETTE[1],
                [
                    svg.Bar(a.interval.rate, a.interval.low, a.interval.high, f"{a.wins}/{a.pairs}")
                    if a is not None
                    else svg.Bar(None)
                    for a in agreements
                ],
            ),
            svg.BarSeries(
                "accuracy (good ok, corrupted not)",
                svg.PALETTE[5],
                [
                    svg.Bar(i.rate, i.low, i.high) if i is not None else svg.Bar(None)
                    for i in accuracies
                ],
            ),
        ],
        y_label="share of pairs",
        description="Whiskers: 95% Wilson interval; 50% agreement is a coin flip.",
    )
    rows = []
    for kind, agreement, accuracy in zip(groups, agreements, accuracies, strict=True):
        rows.append(
            [
                escape(KIND_LABELS.get(kind, "all corruptions")),
                h.interval(agreement.interval) if agreement else "—",
                (f"{agreement.wins} / {agreement.ties} / {agreement.losses}" if agreement else "—"),
                h.interval(accuracy),
            ]
        )
    table = h.table(
        ["Corruption", "Agreement", "Wins / ties / losses", "Accuracy"], rows, "table-judge-check"
    )
    bias = check.position_bias
    orders = (
        f"{h.interval(bias.order_disagrees)} of {bias.answers} answers"
        if bias.order_disagrees is not None
        else '<span class="muted">not measured: swap is off</span>'
    )
    facts = h.table(
        ["Measure", "Value"],
        [
            ["Good answers judged ok", h.interval(check.good_ok)],
            ["Corrupted answers judged not ok", h.interval(check.corrupted_not_ok)],
            ["A-first and B-first queries disagree on the verdict", orders],
            [
                "Both labels in the next token's top-k (parse rate)",
                h.interval(check.labels_read)
                if check.labels_read is not None
                else '<span class="muted">not recorded</span>',
            ],
            [
                "Letter preference: mean log P(A) − log P(B)",
                f"prefers letter {'A' if bias.prefers_a_nats >= 0 else 'B'} by "
                f"{abs(bias.prefers_a_nats):.2f} nats",
            ],
        ],
        "table-judge-bias",
    )
    cases = (
        "<details><summary>Margins per case (log P(good) − log P(bad), nats; a corrupted "
        "answer at or above the good one is marked)</summary>"
        f"{_cases_table(check)}</details>"
        if check.results
        else ""
    )
    body = judge_warning(inputs) + intro + h.grid([chart]) + table + facts + cases
    return h.section("judge", "Judge check", body)


__all__ = ["WARNING", "judge_check", "judge_note", "judge_sentence", "judge_warning"]
