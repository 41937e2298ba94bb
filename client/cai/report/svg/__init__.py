"""Hand-written inline SVG charts: grouped bars with error bars, lines, histograms, funnels.

    svg = bar_chart("eval-rules", "Rule success", ["qa", "all"],
                    [BarSeries("base", "#94a3b8", [Bar(0.5, 0.3, 0.7), Bar(0.4, 0.3, 0.5)])])

Why not a plotting library: the report is one self-contained HTML file with no JavaScript and
no downloads, and matplotlib is not a client dependency. Each chart is an `<svg>` with an `id`,
a `<title>` (what a screen reader and the Chromium test read) and labelled axes. Every text
that reaches the SVG goes through `html.escape`.

- `series`: the data classes (`Bar`, `BarSeries`, `LineSeries`, `HistSeries`) and the
  stage colours; `scale`: tick values and labels.
- `canvas`: what every chart shares (frame, title, y axis, legend, the empty chart).
- `bars` (grouped bars, the funnel), `lines`, `histogram`: one module per chart kind.
"""

from cai.report.svg.bars import bar_chart, funnel_chart
from cai.report.svg.canvas import empty_chart
from cai.report.svg.histogram import histogram
from cai.report.svg.lines import line_chart
from cai.report.svg.scale import fmt, nice_ticks, tick_label
from cai.report.svg.series import PALETTE, Bar, BarSeries, HistSeries, LineSeries, stage_color

__all__ = [
    "PALETTE",
    "Bar",
    "BarSeries",
    "HistSeries",
    "LineSeries",
    "bar_chart",
    "empty_chart",
    "fmt",
    "funnel_chart",
    "histogram",
    "line_chart",
    "nice_ticks",
    "stage_color",
    "tick_label",
]
