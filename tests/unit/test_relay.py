"""The relay: events numbered once, retried attempts de-duplicated for every reader, late attempts fenced,
the final event held until the end is recorded; and the replay rules on their own."""

from __future__ import annotations

import asyncio

import pytest

from archipelag.ids import JobId
from archipelag.jobs.queue import JobQueue, QueueFull
from archipelag.jobs.relay import JobLog, Relay
from archipelag.jobs.replay import Diverged, Replay

JOB = JobId("j")


def tokens(*pieces: str) -> list[dict[str, object]]:
    return [{"type": "token", "content": p} for p in pieces]


def contents(log: JobLog, after: int = -1) -> list[str]:
    return [e["content"] for e in log.read(after).events if e["type"] == "token"]


def test_events_are_numbered_once_whatever_seq_the_host_sent() -> None:
    log = JobLog(JOB)
    log.begin(1)
    published = log.publish(1, [{"type": "status", "message": "s", "seq": 7}, *tokens("a", "b")])
    assert [e["seq"] for e in published] == [0, 1, 2]
    assert [e["seq"] for e in log.read(0).events] == [1, 2]


def test_a_retry_that_repeats_the_stream_adds_only_what_is_new() -> None:
    log = JobLog(JOB)
    log.begin(1)
    log.publish(1, tokens("The", " sea"))
    log.note({"type": "status", "message": "retrying", "retry": 2})
    log.begin(2)
    log.publish(2, [{"type": "status", "message": "started on b"}, *tokens("The", " sea", " is")])
    log.publish(2, tokens(" calm"))
    assert contents(log) == ["The", " sea", " is", " calm"]


def test_a_retry_whose_tokens_are_cut_differently_still_continues_the_text() -> None:
    replay = Replay(tokens("The s", "ea"))
    assert replay.filter({"type": "token", "content": "The"}) is None
    assert replay.filter({"type": "token", "content": " sea is"}) == {"type": "token", "content": " is"}


def test_a_retry_that_says_something_else_diverges() -> None:
    replay = Replay(tokens("The", " sea"))
    with pytest.raises(Diverged):
        replay.filter({"type": "token", "content": "A"})


def test_a_retry_that_ends_before_repeating_what_was_sent_diverges() -> None:
    replay = Replay(tokens("The", " sea"))
    replay.filter({"type": "token", "content": "The"})
    with pytest.raises(Diverged):
        replay.filter({"type": "done"})


def test_progress_already_shown_is_not_shown_again() -> None:
    replay = Replay([{"type": "progress", "step": 1, "total": 3}, {"type": "progress", "step": 2, "total": 3}])
    assert replay.filter({"type": "progress", "step": 2, "total": 3}) is None
    assert replay.filter({"type": "progress", "step": 3, "total": 3}) is not None


def test_a_late_batch_from_a_superseded_attempt_is_dropped() -> None:
    log = JobLog(JOB)
    log.begin(1)
    log.publish(1, tokens("a"))
    log.begin(2)
    assert log.publish(1, tokens("LATE")) == []
    assert contents(log) == ["a"]


def test_the_final_event_waits_for_the_end_to_be_recorded_and_nothing_follows_it() -> None:
    log = JobLog(JOB)
    log.begin(1)
    log.publish(1, [*tokens("a"), {"type": "done"}, *tokens("after")])
    assert [e["type"] for e in log.read(-1).events] == ["token"] and not log.read(-1).ended
    log.end()
    batch = log.read(-1)
    assert [e["type"] for e in batch.events] == ["token", "done"] and batch.ended


def test_a_waiting_reader_wakes_on_the_next_event() -> None:
    async def scenario() -> None:
        log = JobLog(JOB)
        log.begin(1)
        reader = asyncio.ensure_future(log.wait(-1, wait_s=5))
        await asyncio.sleep(0.01)
        log.publish(1, tokens("a"))
        assert [e["content"] for e in (await reader).events] == ["a"]

    asyncio.run(scenario())


def test_a_reader_that_leaves_or_times_out_leaves_the_others_waiting_and_each_wakes_in_one_step() -> None:
    """Readers of one job on several replicas: one cancelled (its client left), one whose wait ran out; the others
    still wake on the next event, each on the loop's next step after it is published (the first token's hop)."""
    async def scenario() -> None:
        log = JobLog(JOB)
        log.begin(1)
        readers = [asyncio.ensure_future(log.wait(-1, wait_s=5)) for _ in range(3)]
        brief = asyncio.ensure_future(log.wait(-1, wait_s=0.01))
        await asyncio.sleep(0.05)
        assert not (await brief).events
        readers[0].cancel()
        await asyncio.sleep(0)
        log.publish(1, tokens("a"))
        await asyncio.sleep(0)  # one step of the loop
        assert all(r.done() for r in readers[1:])
        assert [[e["content"] for e in r.result().events] for r in readers[1:]] == [["a"], ["a"]]
        assert readers[0].cancelled()

    asyncio.run(scenario())


def test_a_checkpoint_seeds_a_resumed_stream_and_a_retry_continues_it() -> None:
    log = JobLog(JOB, [{"type": "status", "message": "s", "seq": 0}, *tokens("The")])
    assert [e["seq"] for e in log.read(-1).events] == [0, 1]
    log.begin(2)
    log.publish(2, tokens("The", " end"))
    assert contents(log, after=1) == [" end"]


def test_the_relay_lets_ended_jobs_go_after_a_while() -> None:
    now = [0.0]
    relay = Relay(keep_ended_s=10, clock=lambda: now[0])
    relay.open(JOB).begin(1)
    relay.end(JOB)
    now[0] = 11
    relay.open(JobId("other"))
    assert JOB not in relay and JobId("other") in relay


def test_the_queue_hands_out_by_priority_then_arrival_and_refuses_past_its_limit() -> None:
    queue: JobQueue[str] = JobQueue(max_jobs=3)
    for job_id, priority in (("a", 0), ("b", 5), ("c", 0)):
        queue.admit()
        queue.push(JobId(job_id), job_id, priority, deadline=0.0, arrived=100.0)
    assert [item for _, item, _ in queue.in_order()] == ["b", "a", "c"]
    with pytest.raises(QueueFull):
        queue.admit()
    queue.remove(JobId("b"))
    queue.admit()


@pytest.mark.parametrize(("waited_s", "first"), [(0, "urgent"), (99, "urgent"), (101, "patient")])
def test_a_low_priority_job_that_has_waited_long_enough_goes_before_new_urgent_ones(waited_s: float,
                                                                                    first: str) -> None:
    """Aging: a point of priority per second waited (aging_s=1), so priority 0 after 100 s beats a new 100."""
    queue: JobQueue[str] = JobQueue(max_jobs=10, aging_s=1.0)
    queue.push(JobId("patient"), "patient", 0, deadline=1e9, arrived=1000.0)
    queue.push(JobId("urgent"), "urgent", 100, deadline=1e9, arrived=1000.0 + waited_s)
    assert next(queue.in_order())[1] == first


def test_a_starving_job_runs_while_urgent_jobs_keep_arriving() -> None:
    """Drive the queue as an overloaded network would: one slot a second, two priority-90 jobs arriving every
    second. The priority-0 job still gets its turn: after the jobs that count as having arrived before it (those
    that came less than 90 s after it, two a second), and before every later one."""
    queue: JobQueue[str] = JobQueue(max_jobs=10_000, aging_s=1.0)
    queue.push(JobId("low"), "low", 0, deadline=1e9, arrived=0.0)
    for second in range(1, 400):
        for n in range(2):
            queue.push(JobId(f"hi-{second}-{n}"), "hi", 90, deadline=1e9, arrived=float(second))
        job_id, item, _ = next(queue.in_order())
        queue.remove(job_id)
        if item == "low":
            assert second == 2 * 89 + 1  # after the 178 that arrived in its first 89 s, before the rest
            return
    pytest.fail("the priority-0 job never ran")


def test_priorities_beyond_the_range_count_as_its_ends() -> None:
    queue: JobQueue[str] = JobQueue(max_jobs=10, aging_s=1.0)
    queue.push(JobId("huge"), "huge", 10_000, deadline=1e9, arrived=50.0)
    queue.push(JobId("old"), "old", 100, deadline=1e9, arrived=49.0)
    assert next(queue.in_order())[1] == "old"


def order(queue: JobQueue[str]) -> list[str]:
    return [item for _, item, _ in queue.in_order()]


def test_a_burst_of_one_account_does_not_keep_another_account_s_later_job_waiting_behind_all_of_it() -> None:
    queue: JobQueue[str] = JobQueue(max_jobs=100, aging_s=1.0)
    for n in range(10):
        queue.push(JobId(f"a{n}"), f"a{n}", 0, deadline=1e9, arrived=100.0, owner="alice")
    queue.push(JobId("b"), "b", 0, deadline=1e9, arrived=101.5, owner="bob")
    assert order(queue)[:4] == ["a0", "a1", "b", "a2"]  # the burst's jobs counted a second apart


def test_two_accounts_bursting_together_take_turns() -> None:
    queue: JobQueue[str] = JobQueue(max_jobs=100, aging_s=1.0)
    for owner in ("alice", "bob"):
        for n in range(3):
            queue.push(JobId(f"{owner}{n}"), f"{owner[0]}{n}", 0, deadline=1e9, arrived=100.0, owner=owner)
    assert order(queue) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_alone_an_account_s_jobs_keep_their_order_and_a_priority_still_goes_ahead() -> None:
    queue: JobQueue[str] = JobQueue(max_jobs=100, aging_s=1.0)
    for n in range(3):
        queue.push(JobId(f"a{n}"), f"a{n}", 0, deadline=1e9, arrived=100.0 + n / 10, owner="alice")
    queue.push(JobId("urgent"), "urgent", 5, deadline=1e9, arrived=100.5, owner="alice")
    assert order(queue) == ["urgent", "a0", "a1", "a2"]


def test_an_account_s_turns_start_again_once_nothing_of_it_waits() -> None:
    queue: JobQueue[str] = JobQueue(max_jobs=100, aging_s=1.0)
    for n in range(3):
        queue.push(JobId(f"a{n}"), f"a{n}", 0, deadline=1e9, arrived=100.0, owner="alice")
    for n in range(3):
        queue.remove(JobId(f"a{n}"))
    assert queue.push(JobId("later"), "later", 0, deadline=1e9, arrived=200.0, owner="alice") == 200.0
    queue.push(JobId("b"), "b", 0, deadline=1e9, arrived=200.5, owner="bob")
    assert order(queue) == ["later", "b"]


def test_a_job_put_back_after_its_host_was_lost_takes_the_place_it_had() -> None:
    queue: JobQueue[str] = JobQueue(max_jobs=100, aging_s=1.0)
    places = [queue.push(JobId(f"a{n}"), f"a{n}", 0, deadline=1e9, arrived=100.0, owner="alice") for n in range(3)]
    queue.remove(JobId("a0"))  # to a host, which is then lost
    queue.push(JobId("b"), "b", 0, deadline=1e9, arrived=100.5, owner="bob")
    queue.put_back(JobId("a0"), "a0", deadline=1e9, counts_from=places[0], owner="alice")
    assert order(queue) == ["a0", "b", "a1", "a2"]
    for job_id in ("a0", "a1", "a2", "b"):
        queue.remove(JobId(job_id))
    assert queue.push(JobId("next"), "next", 0, deadline=1e9, arrived=300.0, owner="alice") == 300.0


def test_a_stream_resumed_from_a_checkpoint_numbers_its_events_as_the_lost_one_did() -> None:
    lost = JobLog(JOB)
    lost.begin(1)
    lost.publish(1, [{"type": "status", "message": "started on a"}, *tokens("a", "b", "c", "d")])
    checkpoint = lost.events[:2]  # saved before the crash; a client had already read up to seq 3
    resumed = JobLog(JOB, checkpoint)
    resumed.begin(2)
    resumed.publish(2, [{"type": "status", "message": "started on b"}, *tokens("a", "b", "c", "d"),
                        {"type": "status", "message": "finishing"}])
    assert resumed.read(3).events == [*lost.read(3).events, {"type": "status", "message": "finishing", "seq": 5}]
