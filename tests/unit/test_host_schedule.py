"""The schedule parser: the hours a host takes work, in its owner's local time."""

from __future__ import annotations

from datetime import datetime

import pytest

from archipelag.actors.schedule import parse_schedule
from archipelag.errors import ValidationFailed


def at(hhmm: str) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2026, 12, 2, hour, minute)


@pytest.mark.parametrize(("schedule", "time", "open_"), [
    ("22:00-07:00", "23:30", True),
    ("22:00-07:00", "00:00", True),
    ("22:00-07:00", "06:59", True),
    ("22:00-07:00", "07:00", False),  # the end is exclusive
    ("22:00-07:00", "12:00", False),
    ("22:00-07:00", "22:00", True),
    ("09:00-17:00", "08:59", False),
    ("09:00-17:00", "09:00", True),
    ("09:00-17:00", "17:00", False),
    ("08:00-12:00, 13:00-17:30", "12:30", False),
    ("08:00-12:00, 13:00-17:30", "17:15", True),
    ("8:00-12:00", "08:00", True),  # one-digit hours
    ("00:00-24:00", "23:59", True),  # all day, written as a clock writes it
    ("00:00-00:00", "13:00", True),  # start == end: all day
    ("18:00-24:00", "23:59", True),
    ("18:00-24:00", "00:00", False),
])
def test_a_schedule_is_open_inside_its_ranges_and_closed_outside(schedule: str, time: str, open_: bool) -> None:
    assert parse_schedule(schedule).open_at(at(time)) is open_


@pytest.mark.parametrize("text", ["", " , ", "22-07", "22:00", "22:00-7", "25:00-07:00", "22:60-07:00",
                                  "22:00-24:30", "ten-eleven", "22:00–07:00", "22:00-07:00-08:00",
                                  ",".join(["01:00-02:00"] * 25)])
def test_a_schedule_that_is_not_hours_is_refused_with_what_is_wrong(text: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule(text)
    assert caught.value.http_status == 422 and "schedule" in caught.value.details["errors"]


def test_a_schedule_says_when_it_next_opens_or_closes() -> None:
    nights = parse_schedule("22:00-07:00")
    assert nights.next_change(at("12:34")) == at("22:00")
    assert nights.next_change(at("23:10")).strftime("%H:%M") == "07:00"
    split = parse_schedule("08:00-12:00,13:00-17:00")
    assert split.next_change(at("12:00")) == at("13:00")
    assert str(split) == "08:00-12:00,13:00-17:00"


def test_a_schedule_open_all_day_never_changes() -> None:
    always = parse_schedule("00:00-24:00")
    assert always.next_change(at("10:00")).day == 3  # a day on: no change to announce
