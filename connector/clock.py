"""Time, injectable: production reads the system clock, tests set it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that moves only when told to."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class ShiftedClock:
    """Real time moving on from a chosen start, that can also jump ahead: time-travel tests and demos
    of days-long triggers (win-back, review requests) while waits of a few seconds still pass."""

    def __init__(self, start: datetime) -> None:
        self.start, self.began, self.jumped = start, time.monotonic(), timedelta(0)

    def now(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self.began) + self.jumped

    def advance(self, **delta: float) -> None:
        self.jumped += timedelta(**delta)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
