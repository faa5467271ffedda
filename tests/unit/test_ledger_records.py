"""Ledger pieces that need no database: key format and hashing, job duration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from archipelag.ids import AccountId, JobId, WorkloadSlug
from archipelag.ledger import Job
from archipelag.ledger.accounts import PREFIX_LEN, hash_key, new_key
from archipelag.ledger.credits import platform_fee_micro
from archipelag.lifecycle import JobStatus


def test_keys_are_random_prefixed_and_hash_to_sha256_hex() -> None:
    first, second = new_key(), new_key()
    assert first != second and first.startswith("ak_") and len(first) >= 40
    assert len(hash_key(first)) == 64 and hash_key(first) == hash_key(first) != hash_key(second)
    assert PREFIX_LEN < len(first) // 2  # the stored prefix never reveals most of the key


def _job(started: datetime | None, completed: datetime | None) -> Job:
    return Job(
        JobId("j"),
        AccountId(1),
        1,
        WorkloadSlug("echo"),
        JobStatus.SUCCEEDED,
        {},
        None,
        None,
        None,
        None,
        1,
        None,
        0,
        datetime.now(UTC),
        started,
        completed,
        0,
        0,
    )


def test_duration_is_start_to_completion_in_milliseconds() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    assert _job(start, start + timedelta(seconds=1.5)).duration_ms == 1500
    assert _job(start, None).duration_ms is None
    assert _job(None, None).duration_ms is None


def test_the_platform_fee_is_a_tenth_rounded_down() -> None:
    assert platform_fee_micro(100_000) == 10_000
    assert platform_fee_micro(9) == 0
