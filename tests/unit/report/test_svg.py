"""The hand-written SVG charts: ticks, escaping, empty data, error bars."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from cai.report import svg

NS = {"s": "http://www.w3.org/2000/svg"}


def _parse(markup: str) -> ET.Element:
    return ET.fromstring(markup)  # well-formed XML, or this raises


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.0, 7.0, [0.0, 2.0, 4.0, 6.0, 8.0]),
        (-0.1, 0.3, [-0.1, 0.0, 0.1, 0.2, 0.3]),
    ],
)
def test_nice_ticks_cover_the_range_with_round_steps(low, high, expected):
    assert svg.nice_ticks(low, high) == pytest.approx(expected)


def test_nice_ticks_survive_a_single_value():
    ticks = svg.nice_ticks(3.0, 3.0)
    assert ticks[0] < 3.0 < ticks[-1]


def test_bar_chart_draws_bars_error_bars_and_a_title():
    chart = svg.bar_chart(
        "c1",
        "Rule <success>",
        ["qa", "all"],
        [svg.BarSeries("base", "#000", [svg.Bar(0.5, 0.3, 0.7, "6/12"), svg.Bar(None)])],
    )
    root = _parse(chart)
    assert root.get("id") == "c1"
    assert root.find("s:title", NS).text == "Rule <success>"
    assert len(root.findall(".//s:rect[@class='bar']", NS)) == 1
    assert len(root.findall(".//s:path[@class='errorbar']", NS)) == 1
    assert "Rule &lt;success&gt;" in chart


def test_series_names_are_escaped():
    chart = svg.line_chart("c2", "t", [svg.LineSeries('<b>"x"</b>', "#000", [(0, 1), (1, 2)])])
    _parse(chart)
    assert "<b>" not in chart


def test_charts_without_data_say_so():
    for chart in (
        svg.bar_chart("a", "A", ["qa"], [svg.BarSeries("s", "#000", [svg.Bar(None)])]),
        svg.line_chart("b", "B", []),
        svg.histogram("c", "C", [svg.HistSeries("s", "#000", [])]),
        svg.funnel_chart("d", "D", []),
    ):
        root = _parse(chart)
        assert root.find("s:title", NS).text in "ABCD"
        assert "no" in "".join(root.itertext())


def test_histogram_counts_every_value_once():
    values = [1, 2, 2, 3, 10, 10, 10]
    root = _parse(svg.histogram("h", "H", [svg.HistSeries("s", "#000", values)]))
    titles = [r.find("s:title", NS).text for r in root.findall(".//s:rect[@class='hist']", NS)]
    assert sum(int(t.split(": ")[1].split(" ")[0]) for t in titles) == len(values)


def test_stage_colours_are_stable_and_base_is_grey():
    assert svg.stage_color(0) == svg.PALETTE[0]
    assert svg.stage_color(1) != svg.stage_color(2)
    assert svg.stage_color(20) in svg.PALETTE[1:]


@pytest.mark.parametrize(
    ("ticks", "expected"),
    [
        ([-0.05, -0.045, -0.04], ["-0.050", "-0.045", "-0.040"]),
        ([0.0, 2.5, 5.0], ["0.0", "2.5", "5.0"]),
        ([0.0, 0.2, 0.4], ["0.0", "0.2", "0.4"]),
        ([10.0, 20.0, 30.0], ["10", "20", "30"]),
    ],
)
def test_tick_labels_show_the_digits_the_spacing_needs(ticks, expected):
    assert [svg.tick_label(t, ticks) for t in ticks] == expected


def test_integer_lengths_get_bins_of_at_least_one():
    root = _parse(svg.histogram("h", "H", [svg.HistSeries("s", "#000", [12, 12, 12, 13])]))
    titles = [r.find("s:title", NS).text for r in root.findall(".//s:rect[@class='hist']", NS)]
    assert titles == ["s: 3 in [12, 13)", "s: 1 in [13, 14)"]
