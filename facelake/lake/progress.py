"""Progress of long loops, reported through a callback so the engine stays free of any orchestrator.

A stage builds a :class:`Progress` with the total it expects and the callback it was given (an asset passes
``context.log.info``; ``None`` reports nothing), calls :meth:`Progress.advance` as work completes, and
:meth:`Progress.finish` at the end. A line goes out at least every ``fraction`` of the total (5 %) or every
``interval_s`` seconds (30 s), whichever comes first, and says done/total, the rate and the ETA::

    detection laion_face_images[00000]: 1,200/24,000 images (5.0%), 38.2 images/s, ETA 9m57s
"""

from __future__ import annotations

import time
from collections.abc import Callable

Report = Callable[[str], None]
"""Where progress lines go (e.g. a Dagster run log's ``info``)."""

DEFAULT_FRACTION = 0.05
DEFAULT_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """``3h02m``, ``9m57s``, ``42s``: short and readable."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts work done against a total and reports it through ``report`` (see the module docstring)."""

    def __init__(
        self,
        label: str,
        total: int | None,
        report: Report | None,
        *,
        unit: str = "items",
        fraction: float = DEFAULT_FRACTION,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.label, self.total, self.unit = label, total, unit
        self.report, self.fraction, self.interval_s, self.clock = report, fraction, interval_s, clock
        self.done = 0
        self.note: str | None = None
        """Appended to each line when set (e.g. the current loss)."""
        self.started = clock()
        self._last_time = self.started
        self._last_done = 0
        self.lines: list[str] = []

    def _step(self) -> float:
        """Work between two lines by count: ``fraction`` of the total (infinite when the total is unknown)."""
        return self.fraction * self.total if self.total else float("inf")

    def message(self) -> str:
        """The current line: done/total (percent), rate, ETA."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            share = f"{self.done:,}/{self.total:,} {self.unit} ({100.0 * self.done / self.total:.1f}%)"
            left = max(self.total - self.done, 0)
            eta = format_duration(left / rate) if rate > 0 else "unknown"
            line = f"{self.label}: {share}, {rate:,.1f} {self.unit}/s, ETA {eta}"
        else:
            line = f"{self.label}: {self.done:,} {self.unit}, {rate:,.1f} {self.unit}/s"
        return f"{line}; {self.note}" if self.note else line

    def _emit(self) -> None:
        line = self.message()
        self.lines.append(line)
        self._last_time, self._last_done = self.clock(), self.done
        if self.report is not None:
            self.report(line)

    def advance(self, count: int = 1) -> None:
        """Record ``count`` more units done; report when a fraction step or the interval has passed."""
        self.done += count
        if self.done - self._last_done >= self._step() or self.clock() - self._last_time >= self.interval_s:
            self._emit()

    def finish(self) -> None:
        """Report the final line (once), whatever the last report was."""
        if not self.lines or self._last_done != self.done:
            self._emit()
