"""Schedule: the hours of the day a host takes work (`host join --schedule "22:00-07:00"`). Pure.

Hours are the host machine's local time, as its owner thinks of them ("nights"). A range whose end is before its
start crosses midnight; several ranges are comma-separated. Outside every range the host is paused by its own
join process, and resumed when a range begins again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from archipelag.errors import ValidationFailed

_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
MINUTES_PER_DAY = 24 * 60
MAX_RANGES = 24  # more is a typo, not a week plan


@dataclass(frozen=True)
class HourRange:
    """Minutes after local midnight; ``end`` < ``start`` crosses midnight, ``end`` == ``start`` is all day."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


@dataclass(frozen=True)
class Schedule:
    ranges: tuple[HourRange, ...]

    def open_at(self, when: datetime) -> bool:
        """Whether the host takes work at local time ``when``."""
        minute = when.hour * 60 + when.minute
        return any(r.contains(minute) for r in self.ranges)

    def next_change(self, when: datetime) -> datetime:
        """The next minute at which ``open_at`` flips (a day on when it never does), to tell the owner when."""
        now = self.open_at(when)
        start = when.replace(second=0, microsecond=0)
        for step in range(1, MINUTES_PER_DAY + 1):
            at = start + timedelta(minutes=step)
            if self.open_at(at) != now:
                return at
        return start + timedelta(days=1)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def _clock(minute: int) -> str:
    return time(minute // 60, minute % 60).strftime("%H:%M")


def parse_schedule(text: str) -> Schedule:
    """``"22:00-07:00"`` or ``"08:00-12:00, 13:00-17:30"``; ValidationFailed that names the bad part."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValidationFailed("a schedule needs at least one range of hours, e.g. 22:00-07:00",
                               errors={"schedule": "empty"})
    if len(parts) > MAX_RANGES:
        raise ValidationFailed(f"a schedule has at most {MAX_RANGES} ranges", errors={"schedule": "too many ranges"})
    ranges = []
    for part in parts:
        match = _RANGE.match(part)
        if match is None:
            raise ValidationFailed(f"{part!r} is not a range of hours like 22:00-07:00",
                                   errors={"schedule": f"bad range {part!r}"})
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2 != 0):
            raise ValidationFailed(f"{part!r} has a time that is not on a clock (00:00 to 24:00)",
                                   errors={"schedule": f"bad time in {part!r}"})
        ranges.append(HourRange(h1 * 60 + m1, (h2 * 60 + m2) % MINUTES_PER_DAY))
    return Schedule(tuple(ranges))
