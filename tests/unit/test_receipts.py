"""Job receipts (issue 11): a host signs the job, the attempt, its usage and the SHA-256 of the job's output; the
coordinator accepts only its enrolled key's signature over exactly what it relayed, and the job's owner can check
the same offline. Pure: the signing, the protocol field, the host agent, the relay and the SDK's check."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from test_host_agent import ScriptedRuntime, a_spec

from archipelag import identity, receipts
from archipelag.actors.host_agent import HostAgent
from archipelag.errors import BadReceipt, ProtocolViolation
from archipelag.ids import HostId, JobId
from archipelag.jobs.relay import Budget, JobLog
from archipelag.protocol import collect_output, validate
from archipelag.receipts import Expected, Receipt
from archipelag.sdk import Job, ReceiptInvalid
from archipelag.sdk.client import verified_receipt

HOST = HostId("h-honest")
KEY = identity.generate_key()
JOB = "job-1"
TOKENS: list[dict[str, Any]] = [{"type": "token", "content": "The"}, {"type": "token", "content": " sea"}]
USAGE = {"prompt_tokens": 3, "completion_tokens": 2}


def ended(usage: dict[str, Any] | None = None, attempt: int = 1, key: Any = KEY, job_id: str = JOB,
          events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A done event after ``events`` (TOKENS), with the receipt ``key`` signs over them."""
    done = {"type": "done", "usage": dict(usage or USAGE)}
    return {**done, "receipt": receipts.sign(identity.key_signer(key, HOST, lambda: 1_700_000_000.5), job_id, attempt,
                                                [*(events or TOKENS), done])}


def expected(attempt: int = 1, public_key: str | None = identity.public_hex(KEY)) -> Expected:
    return Expected(JOB, attempt, HOST, public_key)


def test_an_honest_receipt_is_accepted_and_binds_the_job_the_attempt_the_usage_and_the_output() -> None:
    done = ended()
    receipt = expected().accept(done, "The sea")
    assert receipt == Receipt(HOST, identity.public_hex(KEY), 1, USAGE,
                              hashlib.sha256(b"The sea").hexdigest(), 1_700_000_000.5, done["receipt"]["signature"])
    assert receipts.mismatch(receipt, JOB, "The sea") is None
    assert validate(done) is done  # the field is the protocol's


def test_a_receipt_for_other_usage_than_the_done_event_says_is_refused() -> None:
    done = ended()
    done["usage"]["completion_tokens"] = 200  # more tokens than it signed for
    with pytest.raises(BadReceipt, match="not host h-honest's signature"):
        expected().accept(done, "The sea")


def test_a_receipt_over_other_output_is_refused() -> None:
    with pytest.raises(BadReceipt, match="output has SHA-256"):
        expected().accept(ended(), "The sea is rough")


def test_a_receipt_signed_with_another_hosts_key_is_refused() -> None:
    with pytest.raises(BadReceipt, match="not host h-honest's signature"):
        expected().accept(ended(key=identity.generate_key()), "The sea")


@pytest.mark.parametrize(("signed", "checked"), [(1, 2), (2, 1)])
def test_a_receipt_for_another_attempt_is_refused(signed: int, checked: int) -> None:
    with pytest.raises(BadReceipt, match=f"attempt {checked}"):
        expected(attempt=checked).accept(ended(attempt=signed), "The sea")


def test_a_receipt_for_another_job_is_refused() -> None:
    with pytest.raises(BadReceipt, match="not host h-honest's signature"):
        expected().accept(ended(job_id="job-2"), "The sea")


def test_a_done_without_a_receipt_or_from_a_host_without_a_key_is_refused() -> None:
    with pytest.raises(BadReceipt, match="without a signed receipt"):
        expected().accept({"type": "done", "usage": USAGE}, "The sea")
    with pytest.raises(BadReceipt, match="no enrolled key"):
        expected(public_key=None).accept(ended(), "The sea")


def test_usage_beyond_the_counts_is_left_out_of_what_is_signed() -> None:
    """A workload's extra usage entries (total_tokens) are dropped before charging; the receipt signs the counts."""
    done = ended(usage={**USAGE, "total_tokens": 5})
    done["usage"] = dict(USAGE)  # what the relay's check keeps
    assert expected().accept(done, "The sea").usage == USAGE


@pytest.mark.parametrize("receipt", [
    {"signed_at": 1.0, "output_sha256": "0" * 64},
    {"signed_at": "now", "output_sha256": "0" * 64, "signature": "A" * 88},
    {"signed_at": 1.0, "output_sha256": "XYZ", "signature": "A" * 88},
    {"signed_at": 1.0, "output_sha256": "0" * 64, "signature": "A" * 10},
    {"signed_at": 1.0, "output_sha256": "0" * 64, "signature": "A" * 88, "extra": 1},
    "signed",
])
def test_a_malformed_receipt_field_is_outside_the_protocol(receipt: Any) -> None:
    with pytest.raises(ProtocolViolation, match="receipt"):
        validate({"type": "done", "receipt": receipt})


# --- the host agent -----------------------------------------------------------------------------------


def test_a_host_agent_with_a_key_signs_its_done_event_for_the_attempt_it_was_given() -> None:
    runtime = ScriptedRuntime([*TOKENS, {"type": "done", "usage": USAGE}])
    agent = HostAgent(HOST, {"wasm": runtime}, 2, signer=identity.key_signer(KEY, HOST))
    events = list(agent.run(replace(a_spec(JOB), attempt=2)))
    done = events[-1]
    assert Expected(JOB, 2, HOST, identity.public_hex(KEY)).accept(done, collect_output(events)).attempt == 2


def test_a_host_agent_without_a_key_sends_no_receipt() -> None:
    agent = HostAgent(HOST, {"wasm": ScriptedRuntime([*TOKENS, {"type": "done"}])}, 2)
    assert "receipt" not in list(agent.run(a_spec(JOB)))[-1]


# --- the relay ----------------------------------------------------------------------------------------


def test_the_relay_withholds_a_done_event_whose_receipt_is_refused() -> None:
    log = JobLog(JobId(JOB))
    log.begin(1, Budget(10_000, 100), expected())
    forged = ended()
    forged["usage"]["completion_tokens"] = 3
    with pytest.raises(BadReceipt):
        log.publish(1, [*TOKENS, forged])
    assert log.final is None and log.receipt is None and [e["type"] for e in log.events] == ["token", "token"]


def test_after_a_failover_the_last_hosts_receipt_covers_the_whole_output() -> None:
    """Attempt 2 says the stream's text again from its start (Replay swallows it) and signs all of it."""
    log = JobLog(JobId(JOB))
    log.begin(1, Budget(10_000, 100), expected(1))
    log.publish(1, TOKENS[:1])  # then its host is lost
    log.begin(2, Budget(10_000, 100), expected(2))
    again = [*TOKENS, {"type": "token", "content": " is calm"}]
    log.publish(2, [*again, ended(attempt=2, events=again)])
    output = collect_output(log.events)
    assert output == "The sea is calm" and log.receipt is not None and log.receipt.attempt == 2
    assert receipts.mismatch(log.receipt, JOB, output) is None


def test_a_relay_without_an_expectation_takes_an_unsigned_done() -> None:
    log = JobLog(JobId(JOB))
    log.begin(1, Budget(10_000, 100))
    log.publish(1, [*TOKENS, {"type": "done"}])
    assert log.final is not None and log.receipt is None


# --- the owner's offline check (SDK) ------------------------------------------------------------------


def a_job(output: str = "The sea", usage: dict[str, int] | None = None, **receipt: Any) -> Job:
    signed = expected().accept(ended(), "The sea")
    view = {"host_id": signed.host_id, "host_public_key": signed.host_public_key, "attempt": signed.attempt,
            "usage": signed.usage, "output_sha256": signed.output_sha256, "signed_at": signed.signed_at,
            "signature": signed.signature, **receipt}
    return Job.model_validate({"id": JOB, "status": "completed", "output": output, "host_id": HOST,
                               "usage": usage or USAGE, "receipt": view})


def test_the_owner_verifies_a_receipt_offline() -> None:
    assert verified_receipt(a_job()).host_id == HOST


@pytest.mark.parametrize(("job", "says"), [
    (a_job(output="The sea is rough"), "output has SHA-256"),
    (a_job(usage={"prompt_tokens": 3, "completion_tokens": 9}), "charged for 9 completion_tokens"),
    (a_job(host_public_key=identity.public_hex(identity.generate_key())), "not host h-honest's signature"),
    (a_job(attempt=2), "not host h-honest's signature"),
    (a_job(host_id="h-other"), "ran on h-honest"),
])
def test_the_owner_is_told_what_does_not_match(job: Job, says: str) -> None:
    with pytest.raises(ReceiptInvalid, match=says):
        verified_receipt(job)


def test_a_job_without_a_receipt_cannot_be_verified() -> None:
    job = Job.model_validate({"id": JOB, "status": "completed", "output": "x"})
    with pytest.raises(ReceiptInvalid, match="has no receipt"):
        verified_receipt(job)
