"""Progress lines: every 5 % or 30 s, whichever first, with done/total, rate and ETA."""

from __future__ import annotations

import pytest

from facelake.lake.progress import Progress, format_duration


class Clock:
    """A clock the test moves by hand (the thing under test is the reporting, not time itself)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_every_five_percent_with_rate_and_eta():
    clock, lines = Clock(), []
    progress = Progress("detection", 1000, lines.append, unit="images", clock=clock)
    for _ in range(100):
        clock.now += 0.125
        progress.advance(10)  # 80 images/s (0.125 is exact in binary)
    progress.finish()
    assert len(lines) == 20  # 5 %, 10 %, ..., 100 %; finish adds nothing new
    assert lines[0] == "detection: 50/1,000 images (5.0%), 80.0 images/s, ETA 12s"
    assert lines[-1] == "detection: 1,000/1,000 images (100.0%), 80.0 images/s, ETA 0s"


def test_reports_every_interval_when_steps_are_slow():
    clock, lines = Clock(), []
    progress = Progress("packing", 1000, lines.append, unit="steps", clock=clock)
    for _ in range(3):
        clock.now += 31.0
        progress.advance(1)  # 1/1000 each time: far below 5 %, but 30 s went by
    assert len(lines) == 3
    assert lines[-1] == "packing: 3/1,000 steps (0.3%), 0.0 steps/s, ETA 8h35m"  # 997 left at 3/93 per s


def test_unknown_total_and_no_reporter():
    clock, lines = Clock(), []
    progress = Progress("scan", None, lines.append, clock=clock)
    clock.now += 2
    progress.advance(10)
    progress.finish()
    assert lines == ["scan: 10 items, 5.0 items/s"]
    silent = Progress("quiet", 10, None, clock=clock)
    silent.advance(10)
    silent.finish()
    assert silent.lines[-1].startswith("quiet: 10/10 items (100.0%)")


def test_bad_fraction_and_durations():
    with pytest.raises(ValueError, match="fraction"):
        Progress("x", 10, None, fraction=0)
    assert [format_duration(s) for s in (0, 42, 597, 10_950)] == ["0s", "42s", "9m57s", "3h02m"]
