"""Jobs finished per minute as bars of an inline SVG chart, computed on the server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bar:
    """One minute: where its complete (bottom) and failed (on top) parts are drawn."""

    minute: dt.datetime
    complete: int
    failed: int
    x: float
    width: float
    complete_y: float
    complete_h: float
    failed_y: float
    failed_h: float


@dataclass(frozen=True)
class Chart:
    """Bars for each minute of a window ending with the database's current minute."""

    width: int
    height: int
    bars: list[Bar]
    peak: int
    complete: int
    failed: int
    start: dt.datetime
    end: dt.datetime

    @property
    def empty(self) -> bool:
        return self.complete + self.failed == 0


def minutes_chart(
    rows: Iterable[Mapping[str, Any]], last_minute: dt.datetime, minutes: int = 60, width: int = 600, height: int = 120
) -> Chart:
    """A chart of rows (minute, complete, failed), summed over queues, for the ``minutes`` minutes
    up to and including last_minute."""
    start = last_minute - dt.timedelta(minutes=minutes - 1)
    counts: dict[dt.datetime, tuple[int, int]] = {}
    for r in rows:
        complete, failed = counts.get(r["minute"], (0, 0))
        counts[r["minute"]] = (complete + int(r["complete"]), failed + int(r["failed"]))
    series: list[tuple[dt.datetime, int, int]] = []
    for i in range(minutes):
        minute = start + dt.timedelta(minutes=i)
        complete, failed = counts.get(minute, (0, 0))
        series.append((minute, complete, failed))
    peak = max((c + f for _, c, f in series), default=0)
    step = width / minutes
    bars = []
    for i, (minute, complete, failed) in enumerate(series):
        scale = height / peak if peak else 0.0
        complete_h, failed_h = complete * scale, failed * scale
        bars.append(Bar(
            minute=minute, complete=complete, failed=failed, x=round(i * step + 0.5, 2),
            width=round(max(step - 1, 1), 2), complete_y=round(height - complete_h, 2), complete_h=round(complete_h, 2),
            failed_y=round(height - complete_h - failed_h, 2), failed_h=round(failed_h, 2),
        ))  # fmt: skip
    return Chart(
        width=width, height=height, bars=bars, peak=peak, complete=sum(c for _, c, _ in series),
        failed=sum(f for _, _, f in series), start=start, end=last_minute,
    )  # fmt: skip


def per_queue(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The series' rows by queue."""
    found: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        found.setdefault(r["queue"], []).append(r)
    return found
