"""Signed job receipts (issue 11) behind the real API, JobService and ledger, with a scripted host that has an
enrolled key: an honest receipt is charged, kept with the job, shown by the API and verified by `archipelag jobs
verify`; a missing, forged or mismatched one fails the job for the host and the user pays nothing."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from model_network import HOST, ModelNetwork, a_model_network, serve
from netutil import eventually
from test_hardening_receipts import CREDITS, PRICE, failed_for_the_host, run_chat, tokens
from test_web_pages import a_person, page
from typer.testing import CliRunner

from archipelag import identity, receipts
from archipelag.cli.jobs import register
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus
from archipelag.runtimes.base import JobSpec


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, credits_micro=CREDITS, signed=True)


@pytest.fixture
def api(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def chat(api: TestClient, net: ModelNetwork) -> Any:
    response = api.post("/api/v1/jobs", json={"workload": "llm-chat", "input": {
        "messages": [{"role": "user", "content": "the sea is calm"}], "max_tokens": 8}})
    assert response.status_code == 201, response.text
    job_id = response.json()["data"]["id"]
    eventually(lambda: net.job(job_id).status in TERMINAL_JOB_STATES, timeout_s=5, interval_s=0.02)
    return net.job(job_id)


def forging_host(net: ModelNetwork, monkeypatch: pytest.MonkeyPatch, *, sent: list[dict[str, Any]],
                 signed: list[dict[str, Any]] | None = None, key: Any = None, attempt: int | None = None,
                 receipt: bool = True) -> None:
    """The host sends ``sent`` (its done event last) with a receipt it signs over ``signed`` (else ``sent``), with
    ``key`` (else its enrolled one) for ``attempt`` (else the one it was given)."""
    async def run_batches(spec: JobSpec) -> AsyncIterator[list[Any]]:
        yield [{"type": "status", "message": "loading model"}]
        done = dict(sent[-1])
        if receipt:
            done["receipt"] = receipts.sign(identity.key_signer(key or net.host.key, HOST), spec.job_id,
                                            attempt or spec.attempt, signed or sent)
        for event in [*sent[:-1], done]:
            yield [event]

    monkeypatch.setattr(net.host, "run_batches", run_batches)


DONE = {"type": "done", "usage": {"prompt_tokens": 4, "completion_tokens": 2}}


def test_a_signed_job_is_charged_and_keeps_its_receipt(api: TestClient, net: ModelNetwork) -> None:
    job = chat(api, net)
    assert job.status is JobStatus.SUCCEEDED and job.output == "the sea is calm"
    assert net.ledger.balance_micro(net.account_id) == CREDITS - PRICE
    view = api.get(f"/api/v1/jobs/{job.id}").json()["data"]["receipt"]
    assert net.host.key is not None
    assert view["host_id"] == HOST and view["host_public_key"] == identity.public_hex(net.host.key)
    assert view["attempt"] == 1 and view["usage"] == {"prompt_tokens": 4, "completion_tokens": 4}
    assert view["output_sha256"] == hashlib.sha256(b"the sea is calm").hexdigest()
    assert isinstance(view["signed_at"], float) and len(view["signature"]) == 88


def test_an_unsigned_network_charges_as_before_and_shows_no_receipt(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, credits_micro=CREDITS)  # scripted hosts without keys: nothing to check
    with net.client() as api:
        job = chat(api, net)
        assert job.status is JobStatus.SUCCEEDED and job.receipt is None
        assert api.get(f"/api/v1/jobs/{job.id}").json()["data"]["receipt"] is None


def test_a_host_that_reports_more_tokens_than_it_signed_is_refused(api: TestClient, net: ModelNetwork,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    more = {"type": "done", "usage": {"prompt_tokens": 4, "completion_tokens": 8}}
    forging_host(net, monkeypatch, sent=[*tokens("one", " two"), more], signed=[*tokens("one", " two"), DONE])
    job = run_chat(api, net)
    failed_for_the_host(api, net, job)
    assert job.receipt is None and "not host host-a's signature" in (job.error or "")


def test_a_host_that_signs_with_a_key_that_is_not_its_enrolled_one_is_refused(
        api: TestClient, net: ModelNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    forging_host(net, monkeypatch, sent=[*tokens("one", " two"), DONE], key=identity.generate_key())
    failed_for_the_host(api, net, run_chat(api, net))


def test_a_host_that_signs_other_output_than_it_sent_is_refused(api: TestClient, net: ModelNetwork,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    forging_host(net, monkeypatch, sent=[*tokens("one", " two"), DONE], signed=[*tokens("one"), DONE])
    job = run_chat(api, net)
    failed_for_the_host(api, net, job)
    assert "output has SHA-256" in (job.error or "")


def test_a_host_that_signs_another_attempt_is_refused(api: TestClient, net: ModelNetwork,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    forging_host(net, monkeypatch, sent=[*tokens("one"), DONE], attempt=2)
    failed_for_the_host(api, net, run_chat(api, net))


def test_a_host_that_ends_without_a_receipt_is_refused(api: TestClient, net: ModelNetwork,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    forging_host(net, monkeypatch, sent=[*tokens("one"), DONE], receipt=False)
    job = run_chat(api, net)
    failed_for_the_host(api, net, job)
    assert "without a signed receipt" in (job.error or "")


def test_a_hosts_key_is_read_from_the_ledger_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = a_model_network(tmp_path, credits_micro=CREDITS, signed=True)
    reads: list[str] = []
    original = net.ledger.host_identity

    def counted(host_id: str) -> Any:
        reads.append(host_id)
        return original(host_id)

    monkeypatch.setattr(net.ledger, "host_identity", counted)
    with net.client() as api:
        for _ in range(3):
            assert chat(api, net).status is JobStatus.SUCCEEDED
    assert reads == [HOST]


# --- the owner checks it: `archipelag jobs verify` -------------------------------------------------------


def test_the_owner_verifies_a_receipt_with_the_cli(net: ModelNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    app = typer.Typer()
    register(app)
    with net.client() as api:
        job = chat(api, net)
    with serve(net.app) as url:
        monkeypatch.setenv("ARCHIPELAG_URL", url)
        monkeypatch.setenv("ARCHIPELAG_API_KEY", net.key)
        result = CliRunner().invoke(app, ["jobs", "verify", job.id])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"receipt verified: signed by host {HOST}")
        with net.ledger.engine.begin() as connection:  # the stored output changes under the receipt
            connection.exec_driver_sql("UPDATE jobs SET output = 'the sea is rough' WHERE id = ?", (job.id,))
        tampered = CliRunner().invoke(app, ["jobs", "verify", job.id])
        assert tampered.exit_code == 1 and "output has SHA-256" in tampered.stderr



def _chat_on_the_web(tmp_path: Path, *, signed: bool) -> tuple[ModelNetwork, TestClient, str]:
    """A signed-in person's finished chat, for its page."""
    net = a_model_network(tmp_path, credits_micro=CREDITS, signed=signed, signup_policy="open",
                          session_cookie_secure=False)
    anon = net.client()
    anon.__enter__()
    person = a_person(net, anon, "rui@example.org")
    made = person.post("/api/v1/jobs", json={"workload": "llm-chat", "input": {
        "messages": [{"role": "user", "content": "the sea is calm"}], "max_tokens": 8}},
        headers={"X-CSRF-Token": person.cookies["archipelag_csrf"]})
    assert made.status_code == 201, made.text
    job_id = made.json()["data"]["id"]
    eventually(lambda: net.job(job_id).status in TERMINAL_JOB_STATES, timeout_s=5, interval_s=0.02)
    return net, person, job_id


def test_the_jobs_web_page_shows_its_receipt_and_whether_it_checks_out(tmp_path: Path) -> None:
    net, person, job_id = _chat_on_the_web(tmp_path, signed=True)
    assert page(person, f"/jobs/{job_id}").find("h2", id="receipt-heading")
    shown = person.get(f"/jobs/{job_id}").text
    assert f"Signed by host {HOST} with the key it enrolled" in shown and f"archipelag jobs verify {job_id}" in shown
    with net.ledger.engine.begin() as connection:  # the stored output changes under the receipt
        connection.exec_driver_sql("UPDATE jobs SET output = 'the sea is rough' WHERE id = ?", (job_id,))
    tampered = person.get(f"/jobs/{job_id}").text
    assert "This receipt does not check out: the job&#39;s output has SHA-256" in tampered


def test_a_job_without_a_receipt_shows_none_on_its_page(tmp_path: Path) -> None:
    _, person, job_id = _chat_on_the_web(tmp_path, signed=False)  # scripted hosts without keys
    shown = person.get(f"/jobs/{job_id}")
    assert shown.status_code == 200 and f'data-job-id="{job_id}"' in shown.text
    assert "receipt-heading" not in shown.text
