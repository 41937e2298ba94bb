"""The report's stylesheet, inlined into the page (system fonts: nothing is downloaded)."""

from __future__ import annotations

CSS = """
:root {
  --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --bg: #f8fafc; --card: #ffffff;
  --accent: #2563eb; --good: #15803d; --bad: #b91c1c; --warn: #b45309;
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue", Arial,
        "Noto Sans", "DejaVu Sans", sans-serif;
}
header, main, nav, footer { max-width: 1180px; margin: 0 auto; padding: 0 28px; }
header { padding-top: 32px; padding-bottom: 8px; }
.eyebrow { color: var(--accent); font-weight: 600; font-size: 12px; letter-spacing: .08em;
  text-transform: uppercase; }
h1 { font-size: 30px; margin: 4px 0 14px; letter-spacing: -.01em; }
h2 { font-size: 20px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 18px 0 8px; color: var(--muted); }
.facts { display: flex; flex-wrap: wrap; gap: 8px 28px; margin-bottom: 18px; }
.fact .label { display: block; color: var(--muted); font-size: 12px; }
.fact .value { font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(240px, 1fr)); gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 14px 16px; box-shadow: 0 1px 2px rgba(15, 23, 42, .04); }
.card-title { color: var(--muted); font-size: 13px; }
.card-value { font-size: 30px; font-weight: 700; letter-spacing: -.02em; margin: 2px 0; }
.card-sub { font-size: 13px; color: var(--muted); }
.missing { font-size: 13px; color: var(--muted); margin-top: 14px; }
nav { position: sticky; top: 0; z-index: 2; background: rgba(248, 250, 252, .94);
  border-bottom: 1px solid var(--line); padding-top: 10px; padding-bottom: 10px;
  margin-top: 18px; display: flex; gap: 18px; font-size: 14px; }
nav a { color: var(--ink); text-decoration: none; font-weight: 500; }
nav a:hover { color: var(--accent); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 20px 22px; margin: 20px 0; }
.note { color: var(--muted); font-size: 13px; margin: 0 0 12px; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr));
  gap: 14px; margin-bottom: 14px; }
.charts.cols-3 { grid-template-columns: repeat(3, minmax(0, 1fr)); }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 6px; }
figcaption { font-size: 12px; padding: 2px 6px 0; }
svg.chart { width: 100%; height: auto; display: block; }
svg .chart-title { font-size: 14px; font-weight: 600; fill: var(--ink); }
svg .tick { font-size: 11px; fill: var(--muted); }
svg .axis-label { font-size: 11px; fill: var(--muted); }
svg .legend-text { font-size: 11px; fill: var(--ink); }
svg .value { font-size: 11px; fill: var(--ink); font-weight: 600; }
svg .empty { font-size: 13px; fill: var(--muted); }
svg .grid { stroke: #eef2f7; stroke-width: 1; }
svg .axis { stroke: #cbd5e1; stroke-width: 1; }
svg .errorbar { stroke: var(--ink); stroke-width: 1.3; fill: none; }
svg .line { stroke-width: 2; stroke-linejoin: round; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th { text-align: left; font-weight: 600; color: var(--muted); border-bottom: 2px solid var(--line);
  padding: 6px 8px; white-space: nowrap; }
td { border-bottom: 1px solid var(--line); padding: 7px 8px; vertical-align: top; }
table:not(#table-examples) td:first-child, td code { white-space: nowrap; }
tbody tr:hover { background: #f8fafc; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  background: #f1f5f9; padding: 1px 5px; border-radius: 4px; }
.ci { color: var(--muted); font-size: 12px; }
.muted { color: var(--muted); }
.small { font-size: 12px; }
.sig { color: var(--ink); font-weight: 600; }
.delta.up { color: var(--good); font-weight: 600; }
.delta.down { color: var(--bad); font-weight: 600; }
.delta.flat { color: var(--muted); }
.warn { color: var(--warn); font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 6px; vertical-align: baseline; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; border-radius: 999px;
  padding: 1px 8px; margin: 0 4px 4px 0; white-space: nowrap; }
.badge.ok { background: #dcfce7; color: var(--good); }
.badge.bad { background: #fee2e2; color: var(--bad); }
.badge.none { background: #f1f5f9; color: var(--muted); }
.type { display: inline-block; font-size: 11px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--accent); font-weight: 600; }
.instruction { font-weight: 500; max-width: 260px; }
.response { white-space: pre-wrap; max-height: 11em; overflow: auto; max-width: 330px;
  font-size: 12.5px; color: #1e293b; }
#table-examples td:nth-child(odd):not(:first-child) { min-width: 90px; }
footer { color: var(--muted); font-size: 12px; padding-bottom: 40px; }
@media print { nav { position: static; } section { break-inside: avoid; } }
"""
