"""``audience-sync report``: one self-contained HTML file per job, readable offline.

Charts are inline SVG drawn here, so the page needs no script library and no network; a few lines of
inline script only mark the page as rendered (``data-charts-drawn``) for checks and screen readers.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sync.audit import RUN_TABLE_FIELDS, audiences, run_record
from sync.messages import iso
from sync.store import Store

PALETTE = ("#3b6fd8", "#e07b39", "#2e9e5b", "#9b59b6", "#c0392b", "#16a2b8", "#b8860b", "#e84393", "#5d6d7e", "#7f8c8d")
ENTERED, EXITED = "#2e9e5b", "#d64545"
WIDTH, HEIGHT, PAD = 760, 240, 44
RECENT_RUNS = 20
TOP_REASONS = 10


def render_report(store: Store, job: str, now: datetime) -> str:
    series = audiences(store, job)
    runs = [run_record(run) for run in store.runs(job, RECENT_RUNS)]
    reasons = store.failure_reasons(job, TOP_REASONS)
    audience_series = [s for s in series if s["kind"] == "audience"]
    body = "\n".join(
        [
            f"<h1>audience-sync · {_e(job)}</h1>",
            f"<p class=meta>Generated {_e(iso(now))} · {store.state_size(job):,} users acknowledged · "
            f"{len(audience_series)} audiences · {len(series) - len(audience_series)} traits</p>",
            "<h2>Audience sizes over time</h2>",
            _sizes_chart(audience_series),
            "<h2>Entries and exits per run</h2>",
            _flows_chart(audience_series),
            "<h2>Recent runs</h2>",
            _runs_table(runs),
            "<h2>Top failure reasons</h2>",
            _reasons_table(reasons),
        ]
    )
    return _PAGE.replace("{title}", _e(f"audience-sync report: {job}")).replace("{body}", body)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _sizes_chart(series: Sequence[dict[str, Any]]) -> str:
    runs = sorted({r["run_id"] for s in series for r in s["runs"]})
    if not runs:
        return "<p class=empty>No runs yet.</p>"
    top = max([r["size"] for s in series for r in s["runs"]] + [1])
    x = _scale(len(runs))
    marks, legend = [], []
    for index, entry in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = [(x(runs.index(r["run_id"])), _y(r["size"], top), r) for r in entry["runs"]]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
        marks.append(f'<polyline class=line fill=none stroke="{color}" stroke-width=2 points="{path}"/>')
        marks += [
            f'<circle class=mark cx="{px:.1f}" cy="{py:.1f}" r=3.5 fill="{color}"><title>run {r["run_id"]} · '
            f"{_e(entry['key'])}: {r['size']:,} members</title></circle>"
            for px, py, r in points
        ]
        legend.append(f'<span><i style="background:{color}"></i>{_e(entry["key"])} ({entry["size"]:,})</span>')
    return _svg("sizes", marks, top, runs) + f"<div class=legend>{''.join(legend)}</div>"


def _flows_chart(series: Sequence[dict[str, Any]]) -> str:
    totals: dict[int, list[int]] = {}
    for entry in series:
        for r in entry["runs"]:
            total = totals.setdefault(r["run_id"], [0, 0])
            total[0] += r["delivered_entered"]
            total[1] += r["delivered_exited"]
    runs = sorted(totals)
    if not runs:
        return "<p class=empty>No runs yet.</p>"
    top = max([max(v) for v in totals.values()] + [1])
    band = (WIDTH - 2 * PAD) / len(runs)
    bar, half = min(18.0, band * 0.35), (HEIGHT - 2 * PAD) / 2
    middle = PAD + half
    marks = [f'<line x1={PAD} x2={WIDTH - PAD} y1="{middle}" y2="{middle}" stroke="#999"/>']
    for index, run_id in enumerate(runs):
        entered, exited = totals[run_id]
        centre, up, down = PAD + band * (index + 0.5), half * entered / top, half * exited / top
        marks.append(
            f'<rect class=mark x="{centre - bar:.1f}" y="{middle - up:.1f}" width="{bar:.1f}" '
            f'height="{max(up, 0.5):.1f}" fill="{ENTERED}"><title>run {run_id}: {entered:,} entered'
            f"</title></rect>"
        )
        marks.append(
            f'<rect class=mark x="{centre:.1f}" y="{middle:.1f}" width="{bar:.1f}" '
            f'height="{max(down, 0.5):.1f}" fill="{EXITED}"><title>run {run_id}: {exited:,} exited'
            f"</title></rect>"
        )
    legend = (
        f'<div class=legend><span><i style="background:{ENTERED}"></i>entered</span>'
        f'<span><i style="background:{EXITED}"></i>exited</span></div>'
    )
    return _svg("flows", marks, top, runs, centred=True) + legend


def _scale(count: int) -> Any:
    step = (WIDTH - 2 * PAD) / max(count - 1, 1)
    return lambda index: PAD + (step * index if count > 1 else (WIDTH - 2 * PAD) / 2)


def _y(value: float, top: float) -> float:
    return HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / top


def _svg(name: str, marks: list[str], top: int, runs: list[int], centred: bool = False) -> str:
    labels = [
        f'<text x="{PAD - 6}" y="{PAD + 4}" text-anchor=end>{top:,}</text>',
        f'<text x="{PAD - 6}" y="{HEIGHT - PAD + 4}" text-anchor=end>{top if centred else 0:,}</text>',
        f'<text x="{PAD}" y="{HEIGHT - 12}">run {runs[0]}</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 12}" text-anchor=end>run {runs[-1]}</text>',
    ]
    return (
        f'<svg class=chart data-chart="{name}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role=img aria-label="{name} chart">{"".join(labels)}{"".join(marks)}</svg>'
    )


def _runs_table(runs: Sequence[dict[str, Any]]) -> str:
    if not runs:
        return "<p class=empty>No runs yet.</p>"
    fields = RUN_TABLE_FIELDS
    head = "".join(f"<th>{f.replace('_', ' ')}</th>" for f in fields)
    rows = []
    for run in runs:
        cells = "".join(f"<td>{_e(run.get(f, ''))}</td>" for f in fields)
        rows.append(f'<tr class="{_e(run["status"])}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _reasons_table(reasons: Sequence[tuple[str | None, int | None, int, datetime | None]]) -> str:
    if not reasons:
        return "<p class=empty>No failed updates in the audit window.</p>"
    rows = "".join(
        f"<tr><td>{_e(reason or '')}</td><td>{_e(status or '')}</td><td>{count:,}</td>"
        f"<td>{_e(iso(last) if last else '')}</td></tr>"
        for reason, status, count, last in reasons
    )
    return (
        "<table><thead><tr><th>reason</th><th>HTTP status</th><th>updates</th><th>last seen</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<meta name=viewport content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}.meta{color:#666;margin:0}
svg.chart{background:#fafbfc;border:1px solid #e3e6ea;border-radius:6px;max-width:100%;height:auto}
svg text{font-size:11px;fill:#666}.legend{margin:6px 0}.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 6px;
text-align:left}th{background:#f4f6f8}tr.failed td,tr.blocked td{color:#b03030}tr.partial td{color:#a06000}
.empty{color:#888}
</style></head>
<body>
{body}
<script>
(function () {
  var charts = document.querySelectorAll("svg.chart");
  var drawn = 0;
  charts.forEach(function (chart) { if (chart.querySelectorAll(".mark").length > 0) { drawn += 1; } });
  document.body.setAttribute("data-charts-drawn", String(drawn));
})();
</script>
</body></html>
"""
