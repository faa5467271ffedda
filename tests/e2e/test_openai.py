"""The official ``openai`` package pointed at a real network: 3 `ray start` hosts with Docker, llama.cpp serving
SmolLM2-135M-Instruct in warm sandboxed workers, the tiny Stable Diffusion pipeline, the SQLite ledger."""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import openai
import pytest
from docker_engine import engine_lease
from netutil import eventually, network_settings
from PIL import Image

from archipelag.network import EmbeddedNetwork, start_network
from archipelag.runtimes.orphans import sweep_orphans

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow, pytest.mark.ray_driver]

CHAT_MODEL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    settings = network_settings(tmp_path_factory.mktemp("openai") / "state", host_slots=2, signup_policy="open")
    settings.tiers.standard.cpus = 1.0  # one llama.cpp thread per sandbox (DESIGN §9)
    with engine_lease() as missing:
        if missing:
            pytest.skip(missing)
        net = start_network(settings, hosts=3)
        yield net
        net.stop()


@pytest.fixture(scope="module")
def client(network: EmbeddedNetwork) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{network.url}/v1", api_key=network.api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(network: EmbeddedNetwork) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=network.url, headers={"Authorization": f"Bearer {network.api_key}"},
                      timeout=60) as client:
        yield client


def test_models_lists_what_the_network_can_serve_now(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert CHAT_MODEL in ids and "sd-tiny" in ids
    assert "sdxl" not in ids  # no host holds its weights


def test_a_streamed_chat_arrives_chunk_by_chunk_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=16, seed=1, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16


def test_a_chat_without_streaming_answers_once_and_is_a_job_with_usage(client: openai.OpenAI,
                                                                        http: httpx.Client) -> None:
    answer = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=8, seed=3, temperature=0)
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.total_tokens == (
        answer.usage.prompt_tokens + answer.usage.completion_tokens)
    job_id = answer.id.removeprefix("chatcmpl-")
    job = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
    assert job["workload_slug"] == "llm-chat" and job["status"] == "completed"
    assert job["output"] == answer.choices[0].message.content
    assert job["usage"]["completion_tokens"] == answer.usage.completion_tokens
    # llm-chat costs 0.002 per chat + 0.02 per 1000 completion tokens (DESIGN §7: LLM jobs settle per token)
    assert job["usage"]["credits_used"] == pytest.approx(0.002 + answer.usage.completion_tokens * 0.02 / 1000)


def test_the_same_seed_gives_the_same_answer_through_the_network(client: openai.OpenAI) -> None:
    answers = {client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=12, seed=9,
                                              temperature=0.8).choices[0].message.content for _ in range(2)}
    assert len(answers) == 1


@pytest.mark.parametrize(("change", "match"), [
    ({"messages": [{"role": "user", "content": "x"}] * 129}, "128"),
    ({"messages": [{"role": "user", "content": "x" * (33 * 1024)}]}, "32"),
    ({"max_tokens": 5000}, "4096"),
])
def test_requests_past_the_limits_are_refused_with_422(client: openai.OpenAI, change: dict[str, object],
                                                        match: str) -> None:
    body: dict[str, object] = {"model": CHAT_MODEL, "messages": HI, **change}
    with pytest.raises(openai.UnprocessableEntityError, match=match):
        client.chat.completions.create(**body)  # type: ignore[call-overload]


def test_an_unknown_model_is_404_and_one_no_host_holds_is_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=HI)
    with pytest.raises(openai.InternalServerError) as caught:  # 503
        client.images.generate(model="sdxl", prompt="a cat", size="1024x1024")
    assert caught.value.status_code == 503 and "sdxl" in str(caught.value)


def test_a_bad_key_is_refused(network: EmbeddedNetwork) -> None:
    stranger = openai.OpenAI(base_url=f"{network.url}/v1", api_key="ak_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=CHAT_MODEL, messages=HI)


def test_an_image_is_generated_as_a_png(client: openai.OpenAI) -> None:
    result = client.images.generate(model="sd-tiny", prompt="a red boat", size="64x64", response_format="b64_json",
                                    extra_body={"steps": 2, "seed": 5})
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert image.format == "PNG" and image.size == (64, 64)


def test_concurrent_chats_spread_over_several_hosts(client: openai.OpenAI, http: httpx.Client) -> None:
    answers: list[str] = []

    def chat(n: int) -> None:
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": f"#{n}"}],
                                               max_tokens=24, temperature=0)
        answers.append(reply.id.removeprefix("chatcmpl-"))

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 6
    hosts = {http.get(f"/api/v1/jobs/{job_id}").json()["data"]["host_id"] for job_id in answers}
    assert len(hosts) >= 2


def test_another_account_s_chat_is_not_kept_waiting_behind_a_whole_burst(network: EmbeddedNetwork,
                                                                          http: httpx.Client) -> None:
    """One account sends more chats than the hosts have room for (3 hosts × 2 slots); another account's chat,
    sent once the rest of the burst waits, starts before the burst's last waiting chats, not after all of them."""
    ledger = network.coordinator.ledger
    _, key = ledger.create_api_key(ledger.create_account("turns@example.org", 10**9).id, "k", ("read", "write"))

    def chat(client: httpx.Client, n: int) -> str:
        created = client.post("/api/v1/jobs", json={"workload": "llm-chat", "input": {
            "messages": [{"role": "user", "content": f"Tell a story about the number {n}."}], "max_tokens": 24,
            "temperature": 0}})
        assert created.status_code == 201, created.text
        return str(created.json()["data"]["id"])

    def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()["data"]
        return data

    burst = [chat(http, n) for n in range(12)]
    waiting = [j for j in burst if job(http, j)["status"] == "queued"]
    assert len(waiting) >= 3, [job(http, j)["status"] for j in burst]
    with httpx.Client(base_url=network.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as other:
        single = chat(other, 99)
        ended = eventually(lambda: (jobs := {j: job(http, j) for j in waiting} | {single: job(other, single)})
                           and all(j["status"] == "completed" for j in jobs.values()) and jobs, timeout_s=120)
    started = sorted(ended[j]["started_at"] for j in waiting)
    assert ended[single]["started_at"] < started[-1], (ended[single]["started_at"], started)


def test_a_client_that_goes_away_mid_stream_frees_the_host(client: openai.OpenAI, http: httpx.Client) -> None:
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "Tell a long "
                                            "story."}], max_tokens=2000, temperature=0, stream=True)
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 3:
            break
    job_id = chunk.id.removeprefix("chatcmpl-")
    stream.close()

    def ended() -> dict[str, object] | None:
        job = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
        return job if job["status"] == "cancelled" else None

    job = eventually(ended, timeout_s=30)
    assert job["host_id"]
    eventually(lambda: http.get(f"/api/v1/hosts/{job['host_id']}").json()["data"]["active_jobs"] == 0,
               timeout_s=30)
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_a_stream_survives_its_host_being_killed_mid_answer(client: openai.OpenAI, http: httpx.Client,
                                                            network: EmbeddedNetwork) -> None:
    """Runs last: it kills a host. The retry on another host replays the same seed; the client gets one
    continuous answer, without the tokens it had already seen twice."""
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Tell a long story about a lost lighthouse."}],
        max_tokens=300, temperature=0, seed=11, stream=True)
    pieces: list[str] = []
    killed = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if len(pieces) == 5 and killed is None:
            job_id = chunk.id.removeprefix("chatcmpl-")
            killed = http.get(f"/api/v1/jobs/{job_id}").json()["data"]["host_id"]
            network.kill_host(killed)
    job = eventually(lambda: (j := http.get(f"/api/v1/jobs/{job_id}").json()["data"])["status"] == "completed"
                     and j, timeout_s=60)
    assert killed is not None and job["host_id"] != killed
    assert "".join(pieces) == job["output"]  # the stored output is the retry's whole answer
    assert len(pieces) == job["usage"]["completion_tokens"] or job["usage"]["completion_tokens"] == 300
    sweep_orphans(docker.from_env())  # the killed host's warm worker


def test_a_stranger_signs_up_chats_is_charged_and_is_stopped_at_once_when_suspended(
        network: EmbeddedNetwork, http: httpx.Client) -> None:
    """Sign-up over HTTP, the address verified from the coordinator's mail log, a key made in the browser
    session, a chat through the official client, its charge; then an admin suspends the account and its key
    is refused at once, by every API replica (each caches keys; revocation notices reach them all)."""
    email, password = "stranger@example.org", "a long secret phrase"
    with httpx.Client(base_url=network.url, timeout=60) as browser:
        assert browser.post("/api/v1/auth/signup", json={"email": email, "password": password}).status_code == 201
        mail_log = network.settings.state_dir / "logs" / "mail.log"
        link = eventually(lambda: re.search(rf"to: {re.escape(email)}\n.*?(http\S+verify\?token=([\w-]+))",
                                            mail_log.read_text(), re.DOTALL) if mail_log.exists() else None)
        assert link.group(1).startswith(network.url)
        verified = browser.post("/api/v1/auth/verify", json={"token": link.group(2)})
        assert verified.json()["data"]["account"]["credits"] == 10_000
        signed = browser.post("/api/v1/auth/signin", json={"email": email, "password": password})
        session = {"X-CSRF-Token": signed.json()["data"]["csrf_token"],
                   "Cookie": f"archipelag_session={signed.cookies['archipelag_session']}"}
        browser.cookies.clear()
        made = browser.post("/api/v1/api-keys", json={"name": "my laptop"}, headers=session)
        assert made.status_code == 201, made.text
        key = made.json()["key"]

    stranger = openai.OpenAI(base_url=f"{network.url}/v1", api_key=key, max_retries=0, timeout=120)
    answer = stranger.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=8, seed=3, temperature=0)
    assert answer.choices[0].message.content
    with httpx.Client(base_url=network.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as mine:
        account = mine.get("/api/v1/account").json()["data"]
        job = mine.get(f"/api/v1/jobs/{answer.id.removeprefix('chatcmpl-')}").json()["data"]
        assert job["usage"]["credits_used"] > 0
        assert account["credits"] == pytest.approx(10_000 - job["usage"]["credits_used"])
        replicas = {mine.get("/api/v1/account").status_code for _ in range(10)}  # every replica caches the key
        assert replicas == {200}

        suspended = http.post(f"/api/v1/admin/accounts/{account['id']}/suspend", json={"reason": "a test"})
        assert suspended.status_code == 200, suspended.text
        refused = [mine.get("/api/v1/account") for _ in range(10)]
    assert {r.status_code for r in refused} == {403}
    assert {r.json()["error"]["code"] for r in refused} == {"account_suspended"}
    with pytest.raises(openai.PermissionDeniedError):
        stranger.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=4)
