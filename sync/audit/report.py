"""``audience-sync report``: one self-contained HTML file per job, readable offline.

Charts are inline SVG drawn here, so the page needs no script library and no network; a few lines of
inline script only mark the page as rendered (``data-charts-drawn``) for checks and screen readers.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import islice
from typing import Any

from sync.audit.display import cell
from sync.audit.queries import audiences, change_records, run_calls, run_record, run_table_row
from sync.clock import iso
from sync.store import AuditFilter, Store

PALETTE = ("#3b6fd8", "#e07b39", "#2e9e5b", "#9b59b6", "#c0392b", "#16a2b8", "#b8860b", "#e84393", "#5d6d7e", "#7f8c8d")
ENTERED, EXITED = "#2e9e5b", "#d64545"
WIDTH, HEIGHT, PAD = 760, 240, 44
SMALL_WIDTH, SMALL_HEIGHT, SMALL_PAD = 230, 70, 8
RECENT_RUNS = 20
TOP_REASONS = 10
# Runs with a page of their own, and how much of each the page shows.
DETAILED_RUNS = 10
DETAIL_ROWS = 500
DETAIL_CALLS = 50
_DETAIL_FIELDS = ("user_id", "key", "old", "new", "change", "status", "http_status", "error", "message_id")
_RUN_FIELDS = (
    "run_id", "kind", "trigger", "status", "started_at", "duration_s", "users", "entered", "exited",
    "updates", "delivered", "failed", "error",
)  # fmt: skip
# Numbers that vary between otherwise equal reasons; an address (IPv4, host:port) is part of what the reason
# says, and stays.
_NUMBER = re.compile(r"(?<![\d.:])\d+(?![\d.]*\.\d)(?!:\d)(?![.:]\d)")


def render_report(store: Store, job: str, now: datetime) -> str:
    series = audiences(store, job)
    every_run = store.runs(job, 100_000)
    times = {run.id: run.started_at for run in every_run}
    runs = [run_record(run) for run in every_run[:RECENT_RUNS]]
    reasons = grouped_reasons(store.failure_reasons(job, 10_000))[:TOP_REASONS]
    audience_series = [s for s in series if s["kind"] == "audience"]
    body = "\n".join(
        [
            f"<h1>audience-sync · {_e(job)}</h1>",
            f"<p class=meta>Generated {_e(iso(now))} · {store.state_size(job):,} users acknowledged · "
            f"{len(audience_series)} audiences · {len(series) - len(audience_series)} traits · a snapshot to keep "
            "or send; `audience-sync console` serves every run, change and subject of this store live</p>",
            "<h2>Audience sizes over time</h2>",
            _sizes_chart(audience_series, times),
            "<h2>Each audience on its own scale</h2>",
            small_multiples(audience_series, times),
            "<h2>Entries and exits per run</h2>",
            _flows_chart(audience_series),
            "<h2>Recent runs</h2>",
            "<p class=meta>Click a run for its changed users and the calls sent for them.</p>",
            _runs_table(runs),
            "<h2>Top failure reasons</h2>",
            _reasons_table(reasons),
            "<h2>Run details</h2>",
            "".join(_run_details(store, run) for run in runs[:DETAILED_RUNS]),
        ]
    )
    return _PAGE.replace("{title}", _e(f"audience-sync report: {job}")).replace("{body}", body)


def grouped_reasons(
    reasons: Sequence[tuple[str | None, int | None, int, datetime | None]],
) -> list[tuple[str | None, int | None, int, datetime | None]]:
    """Reasons that differ only in their numbers (``body is 33012 bytes``, ``... 40000 bytes``) as one."""
    groups: dict[tuple[str | None, int | None], list[Any]] = {}
    for reason, status, count, last in reasons:
        key = (_NUMBER.sub("N", reason) if reason else reason, status)
        group = groups.setdefault(key, [0, None])
        group[0] += count
        group[1] = max((seen for seen in (group[1], last) if seen is not None), default=None)
    merged = [(reason, status, count, last) for (reason, status), (count, last) in groups.items()]
    return sorted(merged, key=lambda row: -row[2])


def _run_details(store: Store, run: dict[str, Any]) -> str:
    """One run's page: why it ended as it did, its changed users and the calls sent for them."""
    run_id = run["run_id"]
    changes = list(islice(change_records(store, AuditFilter(run_id=run_id)), DETAIL_ROWS + 1))
    shown = changes[:DETAIL_ROWS]
    head = "".join(f"<th>{f}</th>" for f in _DETAIL_FIELDS)
    rows = "".join("<tr>" + "".join(f"<td>{_e(cell(c.get(f)))}</td>" for f in _DETAIL_FIELDS) + "</tr>" for c in shown)
    more = f"<p class=meta>First {DETAIL_ROWS:,} changes; `audience-sync diff {run_id}` has them all.</p>"
    calls = [json.dumps(call, ensure_ascii=False) for call in islice(run_calls(store, run_id), DETAIL_CALLS)]
    why = f"<p class=why>{_e(run['error'])}</p>" if run.get("error") else ""
    return (
        f'<details class=run id="run-{run_id}"><summary>run {run_id} · {_e(run["kind"])} · {_e(run["status"])} · '
        f"{_e(run['started_at'])} · {run['updates']:,} updates</summary>{why}"
        f'<input class=search type=search placeholder="filter this run\'s changes (user, key, status…)">'
        f"<table class=changes><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        + (more if len(changes) > DETAIL_ROWS else "")
        + f"<h3>Calls sent ({len(calls):,} shown)</h3><pre class=calls>{_e(chr(10).join(calls))}</pre></details>"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _sizes_chart(series: Sequence[dict[str, Any]], times: Mapping[int, datetime]) -> str:
    runs = sorted({r["run_id"] for s in series for r in s["runs"]})
    if not runs:
        return "<p class=empty>No runs yet.</p>"
    top = max([r["size"] for s in series for r in s["runs"]] + [1])
    x = _time_scale([times[r] for r in runs if r in times], WIDTH, PAD)
    marks, legend = [], []
    for index, entry in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = [(x(times[r["run_id"]]), _y(r["size"], top), r) for r in entry["runs"] if r["run_id"] in times]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
        marks.append(f'<polyline class=line fill=none stroke="{color}" stroke-width=2 points="{path}"/>')
        marks += [
            f'<circle class=mark cx="{px:.1f}" cy="{py:.1f}" r=3.5 fill="{color}"><title>run {r["run_id"]} · '
            f"{_e(iso(times[r['run_id']]))} · {_e(entry['key'])}: {r['size']:,} members</title></circle>"
            for px, py, r in points
        ]
        legend.append(f'<span><i style="background:{color}"></i>{_e(entry["key"])} ({entry["size"]:,})</span>')
    first, last = min(times[r] for r in runs), max(times[r] for r in runs)
    return _svg("sizes", marks, top, (_when(first), _when(last))) + f"<div class=legend>{''.join(legend)}</div>"


def small_multiples(series: Sequence[dict[str, Any]], times: Mapping[int, datetime], value: str = "size") -> str:
    """One small chart per key, each on its own scale: a 40-member audience is as visible as a million.
    ``value``: what each run's point shows (an audience's ``size``, a trait's ``delivered_changed``)."""
    charts = []
    for index, entry in enumerate(series):
        points = [(times[r["run_id"]], r[value]) for r in entry["runs"] if r["run_id"] in times]
        if not points:
            continue
        x = _time_scale([t for t, _ in points], SMALL_WIDTH, SMALL_PAD)
        top = max([size for _, size in points] + [1])
        path = " ".join(f"{x(t):.1f},{_y(size, top, SMALL_HEIGHT, SMALL_PAD):.1f}" for t, size in points)
        color = PALETTE[index % len(PALETTE)]
        now = f"{entry['size']:,} (max {top:,})" if value == "size" else f"{points[-1][1]:,} last run (max {top:,})"
        charts.append(
            f'<figure class=small><svg class=spark viewBox="0 0 {SMALL_WIDTH} {SMALL_HEIGHT}" width="{SMALL_WIDTH}" '
            f'height="{SMALL_HEIGHT}" role=img aria-label="{_e(entry["key"])} {_e(value)}">'
            f'<polyline class=line fill=none stroke="{color}" stroke-width=2 points="{path}"/></svg>'
            f"<figcaption>{_e(entry['key'])}: {now}</figcaption></figure>"
        )
    return f"<div class=smalls>{''.join(charts)}</div>" if charts else "<p class=empty>No runs yet.</p>"


def _time_scale(moments: Sequence[datetime], width: int, pad: int) -> Any:
    """x for a moment: runs placed by when they started, so gaps in the schedule show as gaps."""
    start, end = min(moments), max(moments)
    span = (end - start).total_seconds()
    inner = width - 2 * pad
    return lambda moment: pad + (inner * (moment - start).total_seconds() / span if span else inner / 2)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


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
    return _svg("flows", marks, top, (f"run {runs[0]}", f"run {runs[-1]}"), centred=True) + legend


def _y(value: float, top: float, height: int = HEIGHT, pad: int = PAD) -> float:
    return height - pad - (height - 2 * pad) * value / top


def _svg(name: str, marks: list[str], top: int, ends: tuple[str, str], centred: bool = False) -> str:
    labels = [
        f'<text x="{PAD - 6}" y="{PAD + 4}" text-anchor=end>{top:,}</text>',
        f'<text x="{PAD - 6}" y="{HEIGHT - PAD + 4}" text-anchor=end>{f"−{top:,}" if centred else 0}</text>',
        f'<text x="{PAD}" y="{HEIGHT - 12}">{_e(ends[0])}</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 12}" text-anchor=end>{_e(ends[1])}</text>',
    ]
    return (
        f'<svg class=chart data-chart="{name}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role=img aria-label="{name} chart">{"".join(labels)}{"".join(marks)}</svg>'
    )


def _runs_table(runs: Sequence[dict[str, Any]]) -> str:
    if not runs:
        return "<p class=empty>No runs yet.</p>"
    fields: tuple[str, ...] = _RUN_FIELDS
    if any(run.get("unmatched") for run in runs):  # a destination that finds records: how many it found
        at = fields.index("failed") + 1
        fields = (*fields[:at], "unmatched", "matched", *fields[at:])
        runs = [{**run, "matched": _percent(run.get("match_rate"))} for run in runs]
    head = "".join(f"<th>{f.replace('_', ' ')}</th>" for f in fields)
    rows = []
    for run in runs:
        cells = "".join(
            f'<td><a href="#run-{run["run_id"]}">{run["run_id"]}</a></td>'
            if f == "run_id"
            else f'<td class=error title="{_e(run["error"])}">{_e(run_table_row(run)["error"])}</td>'
            if f == "error" and run.get("error")
            else f"<td class={f}>{_e(cell(run.get(f)))}</td>"
            for f in fields
        )
        rows.append(f'<tr class="{_e(run["status"])}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _percent(rate: float | None) -> str:
    return "" if rate is None else f"{rate:.0%}"


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
text-align:left;vertical-align:top}th{background:#f4f6f8}
td.error{min-width:220px;max-width:360px;overflow-wrap:anywhere}
tr.failed td,tr.blocked td{color:#b03030}tr.partial td{color:#a06000}
.empty{color:#888}.why{color:#b03030;font-weight:600}.smalls{display:flex;flex-wrap:wrap;gap:8px}
figure.small{margin:0;border:1px solid #e3e6ea;border-radius:6px;padding:4px;background:#fafbfc}
figcaption{font-size:12px;color:#444}details.run{border:1px solid #e3e6ea;border-radius:6px;margin:6px 0;
padding:4px 8px}details.run summary{cursor:pointer;font-weight:600}input.search{margin:6px 0;width:50%}
pre.calls{max-height:300px;overflow:auto;background:#f6f8fa;padding:6px;font-size:12px}
</style></head>
<body>
{body}
<script>
(function () {
  var charts = document.querySelectorAll("svg.chart");
  var drawn = 0;
  charts.forEach(function (chart) { if (chart.querySelectorAll(".mark").length > 0) { drawn += 1; } });
  document.body.setAttribute("data-charts-drawn", String(drawn));
  function openFromHash() {
    var target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
    if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
  }
  window.addEventListener("hashchange", openFromHash);
  openFromHash();
  document.querySelectorAll("details.run input.search").forEach(function (box) {
    box.addEventListener("input", function () {
      var needle = box.value.toLowerCase();
      box.parentNode.querySelectorAll("table.changes tbody tr").forEach(function (row) {
        row.hidden = needle !== "" && row.textContent.toLowerCase().indexOf(needle) < 0;
      });
    });
  });
})();
</script>
</body></html>
"""
