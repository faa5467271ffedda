"""The batch API on the real app, ledger and jobs service with a scripted host: ``POST /api/v1/jobs/batch``,
``GET /api/v1/jobs/{id}/batch-status``, and the parent as a job (get, cancel)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from model_network import a_model_network

from archipelag.jobs.batches import merged_output, outcome
from archipelag.ledger.records import BatchChild
from archipelag.lifecycle import JobStatus


def chat_inputs(prompts: list[str]) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": p}], "max_tokens": 8} for p in prompts]


def ended(client: TestClient, batch_id: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        progress = client.get(f"/api/v1/jobs/{batch_id}/batch-status").json()
        if progress["parent_state"] in {"succeeded", "failed", "cancelled"}:
            return dict(progress)
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)


def test_a_batch_answers_the_batch_job_shape_and_ends_with_the_merged_outputs(tmp_path: Path) -> None:
    net = a_model_network(tmp_path)
    with net.client() as client:
        answer = client.post("/api/v1/jobs/batch", json={"workload": "llm-chat", "inputs": chat_inputs(
            ["one", "two three", "four"]), "max_parallelism": 2, "bid_price": "0.02", "priority": 5})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert body["data"]["id"] == body["id"]  # under data, and at the top where the reference SDK reads it
        assert body["state"] == "submitted" and body["workload"] == "llm-chat"
        assert body["batch"] == {"chunk_count": 3, "merge_strategy": "concat", "fail_mode": "best_effort",
                                 "completed": 0, "failed": 0, "max_parallelism": 2, "bid_price": 0.02}
        assert [c["batch_index"] for c in body["children"]] == [0, 1, 2]
        assert all(isinstance(c["id"], str) and c["state"] == "submitted" for c in body["children"])
        progress = ended(client, body["id"])
        assert progress["parent_state"] == "succeeded" and progress["child_states"] == {"succeeded": 3}
        assert progress["chunk_count"] == 3 and progress["merge_strategy"] == "concat"
        parent = client.get(f"/api/v1/jobs/{body['id']}").json()["data"]
        assert parent["status"] == "completed" and json.loads(parent["output"]) == ["one", "two three", "four"]
        assert parent["usage"]["credits_used"] == 0
        child = client.get(f"/api/v1/jobs/{body['children'][1]['id']}").json()["data"]
        assert child["status"] == "completed" and child["output"] == "two three"
    assert net.ledger.total_is_zero()


def test_a_wrong_input_is_one_422_naming_its_index_and_nothing_is_created(tmp_path: Path) -> None:
    net = a_model_network(tmp_path)
    with net.client() as client:
        inputs = chat_inputs(["fine", "fine"]) + [{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}]
        answer = client.post("/api/v1/jobs/batch", json={"workload": "llm-chat", "inputs": inputs})
        assert answer.status_code == 422 and "inputs[2]" in answer.json()["error"]["message"]
        assert "inputs[2].max_tokens" in answer.json()["errors"]
        for body, field in [({"workload": "llm-chat", "inputs": []}, "inputs"),
                            ({"workload": "llm-chat", "inputs": chat_inputs(["a"]), "merge_strategy": "zip"},
                             "merge_strategy"),
                            ({"workload": "llm-chat", "inputs": chat_inputs(["a"]), "fail_mode": "never"}, "fail_mode"),
                            ({"workload": "llm-chat", "inputs": chat_inputs(["a"]), "max_parallelism": 0},
                             "max_parallelism"),
                            ({"workload": "llm-chat", "inputs": chat_inputs(["a"]), "bid_price": "-1"}, "bid_price"),
                            ({"workload": "llm-chat", "inputs": chat_inputs(["a"]), "bid_price": "lots"}, "bid_price"),
                            ({"workload": "llm-chat", "inputs": [{"prompt": "a"}] * 1001}, "inputs")]:
            refused = client.post("/api/v1/jobs/batch", json=body)
            assert refused.status_code == 422, (body, refused.text)
            assert any(field in key for key in refused.json()["errors"]), refused.json()
        missing = client.post("/api/v1/jobs/batch", json={"workload": "no-such", "inputs": chat_inputs(["a"])})
        assert missing.status_code == 404
    assert net.ledger.list_jobs(net.account_id)[1] == 0


def test_a_batch_beyond_the_balance_is_a_402_for_the_whole_and_nothing_is_held(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, credits_micro=25_000)  # two chats' worth, not three
    with net.client() as client:
        answer = client.post("/api/v1/jobs/batch", json={"workload": "llm-chat", "inputs": chat_inputs(
            ["a", "b", "c"])})
        assert answer.status_code == 402 and "3 jobs" in answer.json()["error"]["message"]
    assert net.ledger.list_jobs(net.account_id)[1] == 0 and net.ledger.balance_micro(net.account_id) == 25_000


def test_only_the_owner_sees_a_batch(tmp_path: Path) -> None:
    net = a_model_network(tmp_path)
    other = net.ledger.create_account("eve@example.org", 1_000_000)
    _, eve_key = net.ledger.create_api_key(other.id, "eve", ("read", "write"))
    with net.client() as client:
        batch = client.post("/api/v1/jobs/batch", json={"workload": "llm-chat",
                                                        "inputs": chat_inputs(["a"])}).json()
        with net.client(eve_key) as eve:
            assert eve.get(f"/api/v1/jobs/{batch['id']}/batch-status").status_code == 404
            assert eve.get(f"/api/v1/jobs/{batch['id']}").status_code == 404
            assert eve.delete(f"/api/v1/jobs/{batch['id']}").status_code == 404
        single = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": chat_inputs(["b"])[0]}).json()
        assert client.get(f"/api/v1/jobs/{single['data']['id']}/batch-status").status_code == 404  # no batch
        assert client.get("/api/v1/jobs/no-such-job/batch-status").status_code == 404
        ended(client, batch["id"])


def test_cancelling_the_parent_cancels_its_children_and_refunds_them(tmp_path: Path) -> None:
    net = a_model_network(tmp_path)
    with net.client() as client:
        batch = client.post("/api/v1/jobs/batch", json={"workload": "llm-chat", "max_parallelism": 1,
                                                        "inputs": chat_inputs(["park", "a", "b"])}).json()
        deadline = time.monotonic() + 10
        while client.get(f"/api/v1/jobs/{batch['children'][0]['id']}").json()["data"]["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancelled = client.delete(f"/api/v1/jobs/{batch['id']}").json()["data"]
        assert cancelled["status"] == "cancelled"
        progress = client.get(f"/api/v1/jobs/{batch['id']}/batch-status").json()
        assert progress["parent_state"] == "cancelled" and progress["child_states"] == {"cancelled": 3}
    assert net.ledger.balance_micro(net.account_id) == 1_000_000 and net.ledger.total_is_zero()


def test_the_parents_end_is_decided_by_its_children_and_its_fail_mode() -> None:
    def child(index: int, status: JobStatus, output: str | None = None) -> BatchChild:
        return BatchChild(id=f"c{index}", batch_index=index, status=status, error=None, host_id=None, output=output)  # type: ignore[arg-type]

    ok, bad = child(0, JobStatus.SUCCEEDED, "[1, 2]"), child(1, JobStatus.FAILED)
    text = child(2, JobStatus.SUCCEEDED, "plain words")
    assert outcome([ok, bad], "best_effort", None) == (JobStatus.SUCCEEDED, None)
    assert outcome([ok, bad], "fail_fast", None)[0] is JobStatus.FAILED
    assert outcome([bad], "best_effort", None)[0] is JobStatus.FAILED
    assert outcome([ok], "best_effort", "stop") == (JobStatus.CANCELLED, "stop")
    assert json.loads(merged_output([text, bad, ok], "concat")) == [[1, 2], None, "plain words"]
    assert json.loads(merged_output([text, bad, ok], "flatten")) == [1, 2, None, "plain words"]
