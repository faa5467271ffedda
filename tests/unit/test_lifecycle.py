from __future__ import annotations

import itertools

import pytest

from archipelag.lifecycle import (
    HOST_TRANSITIONS,
    JOB_TRANSITIONS,
    PUBLIC_JOB_STATUS,
    TERMINAL_JOB_STATES,
    HostStatus,
    JobStatus,
    can_move,
    sources_of,
)


def test_terminal_job_states_have_no_exits() -> None:
    for status in TERMINAL_JOB_STATES:
        assert JOB_TRANSITIONS[status] == frozenset()


def test_every_non_terminal_state_can_reach_a_terminal_one() -> None:
    for start in JobStatus:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in JOB_TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & TERMINAL_JOB_STATES, start


def test_running_job_cannot_return_to_submitted() -> None:
    for status in (JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.STREAMING):
        assert not can_move(status, JobStatus.SUBMITTED)


def test_lost_host_sends_running_jobs_back_to_queued() -> None:
    assert sources_of(JobStatus.QUEUED) == {JobStatus.SUBMITTED, JobStatus.ASSIGNED, JobStatus.STARTED,
                                            JobStatus.STREAMING}


@pytest.mark.parametrize("source,target", list(itertools.product(JobStatus, JobStatus)))
def test_sources_of_agrees_with_the_table(source: JobStatus, target: JobStatus) -> None:
    assert (source in sources_of(target)) == can_move(source, target)


def test_public_vocabulary_matches_archipelag_io() -> None:
    assert set(PUBLIC_JOB_STATUS.values()) == {"pending", "queued", "running", "completed", "failed",
                                                "cancelled", "timeout"}
    assert PUBLIC_JOB_STATUS[JobStatus.TIMED_OUT] == "timeout"


def test_every_host_state_has_a_row_and_none_loops_to_itself() -> None:
    assert set(HOST_TRANSITIONS) == set(HostStatus)
    for source, targets in HOST_TRANSITIONS.items():
        assert source not in targets
