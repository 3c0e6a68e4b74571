"""The live summary ``gridwatch run`` shows on a terminal: one rich table per second.

It renders the same status dictionary as the status file (so what the operator sees
live and what ``gridwatch status`` shows later never disagree). Without a terminal the
pipeline logs a JSON stats line every ``log_every_s`` instead.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

GRADE_STYLE = {"red": "bold red", "yellow": "yellow", "green": "green"}


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    return f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def render(status: dict[str, Any]) -> Group:
    """A compact panel: throughput, alerts by grade, queues, rejects, health."""
    title = Text.assemble(
        ("gridwatch ", "bold"),
        (f"{status.get('state', '?')}", "green" if status.get("state") == "running" else "red"),
        f"  up {_fmt(status.get('uptime_s'), ' s')}",
        f"  {status.get('transport', '')}  {status.get('storage', '')}",
    )
    workers = status.get("workers")
    parts: list[Any] = [title]
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("readings/s", "stored/s", "accepted", "stored", "rejected", "lag s", "RSS MB"):
        t.add_column(col, justify="right")
    r, s = status.get("readings", {}), status.get("stored", {})
    rejected = sum((status.get("rejected") or {}).values())
    t.add_row(
        _fmt(r.get("per_s")),
        _fmt(s.get("per_s")),
        _fmt(r.get("accepted")),
        _fmt(s.get("rows")),
        _fmt(rejected),
        _fmt(status.get("device_lag_s")),
        _fmt(status.get("rss_mb")),
    )
    parts.append(t)

    a = status.get("alerts", {})
    opened = a.get("opened", {})
    line = Text("alerts opened  ")
    for grade in ("red", "yellow", "green"):
        line.append(f"{grade} {opened.get(grade, 0)}  ", style=GRADE_STYLE[grade])
    lat = (a.get("latency") or {}).get("red") or {}
    line.append(
        f"  red latency p50 {_fmt(lat.get('p50_s'), ' s')} p99 {_fmt(lat.get('p99_s'), ' s')}"
    )
    parts.append(line)

    q = status.get("queues", {})
    dq = status.get("dispatch_queues", {})
    ready = sum(v for k, v in dq.items() if k.endswith(".ready"))
    waiting = sum(v for k, v in dq.items() if k.endswith(".waiting"))
    parts.append(
        Text(
            f"queues  dispatch ready {ready} waiting {waiting}  "
            f"ingest {q.get('inprocess', 0)}+{q.get('ingest_handoff', 0)}  "
            f"detect {q.get('detect', 0)}  unacked {q.get('unacked', 0)}  "
            f"writer {s.get('writer_rows', 0)}  backlog {_fmt(s.get('backlog_bytes'), ' B')}"
        )
    )
    rules = status.get("rules") or {}
    if rules.get("error"):
        parts.append(
            Text(
                f"rules file refused ({rules['error']}); rules {rules.get('digest')} stay in force",
                style="bold yellow",
            )
        )
    if rejected:
        top = sorted((status.get("rejected") or {}).items(), key=lambda kv: -kv[1])[:4]
        parts.append(Text("rejects  " + "  ".join(f"{k} {v}" for k, v in top), style="dim"))
    if workers:
        w = Table(show_header=True, header_style="bold", box=None)
        for col in ("worker", "pid", "state", "readings/s", "restarts"):
            w.add_column(col)
        for wk in workers:
            w.add_row(
                str(wk.get("index")),
                str(wk.get("pid")),
                str(wk.get("state")),
                _fmt((wk.get("readings") or {}).get("per_s")),
                str(wk.get("restarts", 0)),
            )
        parts.append(w)
    links = [f"{k}: {status[k]}" for k in ("console_url", "metrics_url") if status.get(k)]
    if links:
        parts.append(Text("  ".join(links), style="dim"))
    if status.get("problem"):
        parts.append(Text(f"problem: {status['problem']}", style="bold red"))
    return Group(*parts)


def stats_line(status: dict[str, Any]) -> dict[str, Any]:
    """The periodic log line's fields (no terminal)."""
    r, s, a = status.get("readings", {}), status.get("stored", {}), status.get("alerts", {})
    return {
        "readings_per_s": r.get("per_s"),
        "stored_per_s": s.get("per_s"),
        "accepted": r.get("accepted"),
        "stored": s.get("rows"),
        "rejected": sum((status.get("rejected") or {}).values()),
        "alerts_opened": a.get("opened"),
        "device_lag_s": status.get("device_lag_s"),
        "backlog_bytes": s.get("backlog_bytes"),
    }
