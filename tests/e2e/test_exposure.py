"""What `archipelag up` exposes, on one network started as a user starts it: every socket its processes listen on
is on the loopback interface (DESIGN §10), and its logs never hold a prompt, an output or an API key (§10, STYLE)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from docker_engine import engine_lease
from netutil import eventually, free_port
from up_process import network_processes, start_up

from archipelag.nodes import runtime_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.beside_ray]

CHAT_MODEL = "smollm2-135m-instruct"
# Distinctive words: they cannot be in a log by chance, only because a prompt or an output was logged.
SECRET_WORDS = "quokka-zanzibar-7731"


@dataclass
class Up:
    url: str
    api_key: str
    process: subprocess.Popen[str]
    output: list[str]  # `up`'s stdout and stderr, still being read
    state_dir: Path
    ray_dir: Path
    docker: str | None  # why there is no Docker engine, or None


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state_dir = tmp_path_factory.mktemp("exposure")
    # Ray's temp dir of this network alone, so its session logs are the ones read (short: Ray's socket paths).
    ray_dir = Path(tempfile.mkdtemp(prefix="arx-", dir="/tmp"))
    port = free_port()
    with engine_lease() as missing:
        process, output = start_up(state_dir, port, free_port(), hosts=1, ray_temp_dir=str(ray_dir))
        try:
            api_key = (state_dir / "api_key").read_text().strip()
            yield Up(f"http://127.0.0.1:{port}", api_key, process, output, state_dir, ray_dir, missing)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)
            shutil.rmtree(ray_dir, ignore_errors=True)


def on_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None  # ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def listening_sockets(processes: list[psutil.Process]) -> list[tuple[str, int, str, str]]:
    """(address, port, kind, process) for each TCP socket in LISTEN and each bound UDP socket."""
    found = []
    for proc in processes:
        try:
            name = f"{proc.pid} {' '.join(proc.cmdline())[:110]}"
            connections = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for conn in connections:
            udp = conn.type == socket.SOCK_DGRAM
            if (conn.status == psutil.CONN_LISTEN or udp) and conn.laddr:
                found.append((conn.laddr.ip, conn.laddr.port, "udp" if udp else "tcp", name))
    return sorted(set(found))


def chat_through_openai(up: Up) -> list[str]:
    """A chat through /v1/chat/completions, whole and streamed: the texts that must stay out of the logs."""
    client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=up.api_key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": f"Repeat after me: {SECRET_WORDS} whole"}]
    whole = client.chat.completions.create(model=CHAT_MODEL, messages=messages,  # type: ignore[arg-type]
                                           max_tokens=24, seed=5, temperature=0)
    streamed = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": f"Repeat after me: {SECRET_WORDS} streamed"}],
        max_tokens=24, seed=6, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    return [whole.choices[0].message.content or "", "".join(pieces)]


def job_and_stream(http: httpx.Client, workload: str, job_input: dict[str, object]) -> str:
    """A job through POST /api/v1/jobs, read from its stream: the text it streamed."""
    created = http.post("/api/v1/jobs", json={"workload": workload, "input": job_input})
    assert created.status_code == 201, created.text
    job_id = created.json()["data"]["id"]
    with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert events[-1]["type"] == "done", events[-1]
    return "".join(e.get("content", "") for e in events if e["type"] == "token")


def _not_a_log(path: Path) -> bool:
    """The ledger (it holds jobs' inputs and outputs by design, DESIGN §7), sockets, keys and artifacts."""
    return ".db" in path.name or path.suffix in {".sock", ".wasm", ".json", ".toml", ".gguf", ".pem", ".key"}


def network_logs(up: Up) -> dict[str, str]:
    """Every log this network wrote: the state dir (node, join and mail logs), Ray's session dirs (the hosts' and
    the heads'), `up`'s output."""
    logs = {"up stdout": "".join(up.output)}
    for root in (up.state_dir, up.ray_dir, runtime_dir(up.state_dir)):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.name != "api_key" and not _not_a_log(path):
                try:
                    logs[str(path)] = path.read_bytes().decode("utf-8", "replace")
                except OSError:
                    continue
    return logs


def test_logs_never_hold_prompts_outputs_or_keys(up: Up) -> None:
    secrets: dict[str, str] = {"the API key": up.api_key}
    with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {up.api_key}"}, timeout=120) as http:
        echo_text = f"{SECRET_WORDS} echo one two"
        echoed = job_and_stream(http, "wasm-echo-stream", {"text": echo_text, "repeat": 2})
        secrets |= {"a job's input": echo_text, "a job's output": echoed}
        assert http.post("/v1/chat/completions", headers={"Authorization": "Bearer ak_wrong-key-7731"},
                         json={"model": CHAT_MODEL, "messages": []}).status_code == 401
        secrets["a refused key"] = "ak_wrong-key-7731"
        if up.docker is None:
            eventually(lambda: any(m["id"] == CHAT_MODEL for m in http.get("/v1/models").json()["data"]),
                       timeout_s=120)
            answers = chat_through_openai(up)
            prompt = f"Say: {SECRET_WORDS} jobs"
            streamed = job_and_stream(http, "llm-chat", {"prompt": prompt, "max_tokens": 24, "temperature": 0})
            secrets |= {"a chat prompt": SECRET_WORDS, "a job's prompt": prompt, "a chat answer": answers[0],
                        "a streamed chat answer": answers[1], "a chat job's output": streamed}
    secrets = {what: text for what, text in secrets.items() if len(text.strip()) >= 12}  # short ones are words
    logs = network_logs(up)
    print(f"\nread {len(logs)} logs ({sum(map(len, logs.values())) >> 10} KiB); looked for {sorted(secrets)}")
    found = [f"{what} in {where}" for where, text in logs.items() for what, secret in secrets.items()
             if secret.strip() in text]
    assert not found, "secrets in the logs:\n" + "\n".join(found)
    if up.docker is not None:
        pytest.skip(f"the chat model's part needs Docker: {up.docker}")


# After the chat: what a network opens once it has served a job is listed too.
def test_every_socket_of_the_network_listens_on_loopback_only(up: Up) -> None:
    processes = network_processes(up.process.pid) + [psutil.Process(up.process.pid)]
    sockets = listening_sockets(processes)
    print(f"\n{len(sockets)} listening sockets of {len(processes)} processes:")
    for ip, port, kind, proc in sockets:
        print(f"  {kind} {ip}:{port}  {proc}")
    api_port = int(up.url.rsplit(":", 1)[1])
    assert any(port == api_port for _, port, _, _ in sockets), "the API's socket is among those listed"
    exposed = [s for s in sockets if not on_loopback(s[0])]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(f"{k} {ip}:{p}  {proc}" for ip, p, k, proc in exposed)
