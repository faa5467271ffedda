"""LLM chat under load: total tokens/s of 1, 2, 4, 8 and 32 concurrent streamed chats through `/v1/chat/completions`,
on a one-host network and on the 3-host embedded network, next to one direct llama-cpp-python stream.

Same model (SmolLM2-135M-Instruct Q8_0, as llm-chat's hosts load it), same thread count for the direct run and for each
host's model worker (which decodes up to 8 chats in one batch, manifest `parallel = 8`), in the same run. Every
chat asks for `TOKENS` tokens at temperature 0 with a prompt of its own. Total tokens/s = the completion tokens
every chat reported (`usage`), over the wall time from the first request to the last `[DONE]`; the p50 of three
rounds up to 8 chats, one round of 32. Their baseline is one chat straight into llama-cpp-python timed the same
way: its tokens over the time from the call to its last token, on the prompts the rounds begin with (its first
token's wait counted, as each total counts its chats'); its rate after the first token is printed beside it.
Single stream: tokens/s after the first token of one chat alone, network ÷ the same chat direct right after it.
Aims (issue 9): ≥ 2.5× one direct stream at 8 concurrent on one host; single-stream ratio ≥ 0.99.
First rows: the decoder's own ceiling, a llama.cpp step of N chats against a step of one (no network); then llm-chat's
batched decoder itself generating 8 chats in process, timed as the network's totals are: what the network's 8 chats
could make at most. Then, on one host: one account sends a burst of `BURST` chats, and a second later another
account sends one chat; its time to first token, beside the same chat on the idle network (accounts take turns in
the queue, `jobs/queue.py`). Last: the CPU per token of 8 concurrent chats on one host, the model worker's and
each of the network's processes'.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx

from archipelag.network import start_network
from archipelag.settings import Settings
from bench.bench_llm import model_path, stream_chat
from bench.cpu import Cost, cost_of

Row = tuple[str, str, str]
TOKENS = 64
# Threads of the direct run and of each host's model worker (its tier's cores): 1 by default, as in
# `bench llm`; ARCHIPELAG_BENCH_THREADS=2 gives both sides this machine's two cores.
THREADS = int(os.environ.get("ARCHIPELAG_BENCH_THREADS", "1"))
CONCURRENCY = (1, 2, 4, 8, 32)
ROUNDS = 3  # rounds of up to 8 concurrent chats, each total the p50 of them (one round moved ±10 % from run to run)
BURST = 32  # chats of one account ahead of another account's single chat: 8 run, 24 wait


def step_ms(chats: int, prompt: int = 24, steps: int = 30) -> float:
    """Median time of one llama_decode step of ``chats`` one-token sequences, each after a prompt of its own,
    in a context set up as llm-chat's batched decoder sets its own (``THREADS``, a cache per sequence, flash
    attention), every logit read: what the decoder's ceiling is before anything of the network runs."""
    from llama_cpp import llama_cpp as ll
    from llama_cpp._internals import LlamaModel

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # not a line per graph node before the table
    model = LlamaModel(path_model=str(model_path()), params=ll.llama_model_default_params(), verbose=False)
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = 256 * chats, chats, False
    params.n_batch = params.n_ubatch = max(512, chats * prompt)
    params.n_threads = params.n_threads_batch = THREADS
    params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = ll.llama_init_from_model(model.model, params)
    batch = ll.llama_batch_init(params.n_batch, 0, 1)
    try:
        def decode(tokens: list[tuple[int, int, int, bool]]) -> None:  # (token, position, sequence, logits)
            for i, (token, pos, seq, logits) in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
                batch.seq_id[i][0] = seq
            batch.n_tokens = len(tokens)
            assert ll.llama_decode(ctx, batch) == 0

        decode([(100 + i + seq, i, seq, i == prompt - 1) for seq in range(chats) for i in range(prompt)])
        times = []
        for step in range(steps):
            start = time.perf_counter()
            decode([(200 + step, prompt + step, seq, True) for seq in range(chats)])
            for seq in range(chats):
                ll.llama_get_logits_ith(ctx, seq)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2] * 1000
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)


def step_rows() -> list[Row]:
    """The decoder's ceiling: a step of N chats against N steps of one, measured back to back."""
    one = step_ms(1)
    rows: list[Row] = [("llama.cpp step of 1 chat (baseline)", f"{one:.1f} ms", f"{THREADS} thread(s), Q8_0")]
    for chats in (2, 8, 32):
        ms = step_ms(chats)
        rows.append((f"llama.cpp step of {chats} chats", f"{ms:.1f} ms",
                     f"{ms / one:.1f} steps of one: batched, at most {chats * one / ms:.2f}× one stream"))
    return rows


def decoder_tps(chats: int, rounds: int = ROUNDS) -> float:
    """Total tokens/s of ``chats`` chats generated together by llm-chat's own worker code in this process: its
    ``load_decoder`` (the model, the batched decoder with ``parallel`` sequences, threads) and its ``prompt_tokens``
    (the model's template and stop strings), as a multiplexed worker runs them, without the network around it.
    p50 of ``rounds`` of the network's prompts, after a round that warms the caches; each from the first chat's
    submission to the last chat's end, as the network's totals are timed. Meant for a process of its own
    (``decoder_alone_tps``): it takes the worker's environment and module path."""
    workloads = Path(__file__).resolve().parents[1] / "workloads"
    sys.path[:0] = [str(workloads / "llm-chat"), str(workloads / "container_sdk")]
    os.environ.update({"ARCHIPELAG_MODEL": str(model_path()), "ARCHIPELAG_THREADS": str(THREADS),
                       "ARCHIPELAG_WORKER": "1", "ARCHIPELAG_PARALLEL": str(chats)})
    worker = importlib.import_module("main")  # llm-chat's program; it imports its decoder as the worker does
    with contextlib.redirect_stdout(io.StringIO()):  # its "loading model" event
        engine = worker.load_decoder()
    decoder = importlib.import_module("decoder")

    def chat(n: int) -> Any:
        tokens, stops = worker.prompt_tokens(engine.model, _messages(n))
        return engine.submit(decoder.Chat(tokens, TOKENS, 0.0, 0.95, n, stops))

    def finish(submitted: Any) -> int:
        while not isinstance(item := submitted.next(timeout_s=60), decoder.Finish):
            assert item is not None, "the decoder made no progress in 60 s"
        return int(item.completion_tokens)

    sum(finish(c) for c in [chat(100 + n) for n in range(chats)])  # warm, as the network's load is warmed
    rates = []
    for round_ in range(rounds):  # the prompts of the network's rounds
        start = time.perf_counter()
        made = sum(finish(c) for c in [chat(300 + 50 * round_ + n) for n in range(chats)])
        rates.append(made / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def decoder_alone_tps(chats: int) -> float:
    """``decoder_tps`` in a process of its own, so its context (and its thread) go when it returns."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(decoder_tps, chats).result()


def _messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell story number {n} about a lighthouse keeper."}]


def direct_model() -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(model_path()), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)


def direct_chat(llm: Any, n: int) -> tuple[float, float]:
    """One streamed chat, llama-cpp-python in this process: (tokens/s after its first token, tokens/s over its
    whole time, from the call to its last token). Tokens are counted as pieces of text, except that a chat cut at
    ``max_tokens`` made exactly that many (a piece may hold more than one token)."""
    first = 0.0
    pieces = 0
    ended = None
    start = time.perf_counter()
    chunks: Any = llm.create_chat_completion(messages=_messages(n), max_tokens=TOKENS, temperature=0.0, stream=True)
    for chunk in chunks:
        ended = chunk["choices"][0].get("finish_reason") or ended
        if chunk["choices"][0]["delta"].get("content"):
            pieces += 1
            if pieces == 1:
                first = time.perf_counter()
    end = time.perf_counter()
    tokens = TOKENS if ended == "length" else pieces
    return (tokens - 1) / max(end - first, 1e-9), tokens / max(end - start, 1e-9)


def direct_stream(llm: Any, n: int) -> float:
    """Tokens/s after the first token of one streamed chat, llama-cpp-python in this process."""
    return direct_chat(llm, n)[0]


def direct_tps(llm: Any) -> tuple[float, float]:
    """One direct stream's tokens/s after its first token (p50 of 3, after one that warms the caches), and one
    direct chat's total tokens/s on the prompts the totals' rounds begin with (p50 of 3): the totals' baseline."""
    runs = [direct_stream(llm, n) for n in range(4)]
    totals = [direct_chat(llm, 300 + 50 * round_)[1] for round_ in range(ROUNDS)]
    return sorted(runs[1:])[1], sorted(totals)[len(totals) // 2]


def _client(url: str, key: str) -> httpx.AsyncClient:
    """The load's client: room for every chat of the largest concurrency on kept connections."""
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600,
                             limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))


async def _chat(http: httpx.AsyncClient, n: int) -> tuple[int, float, float]:
    """(completion tokens, first token at, done at) of one streamed chat."""
    chat = await stream_chat(http, _messages(n), TOKENS)
    return chat.completion_tokens, chat.first, chat.done


async def _load(url: str, key: str, llm: Any) -> dict[str, float]:
    """Total tokens/s at each concurrency, and one chat's tokens/s after its first token, each of those trials
    followed by the same chat direct (``single_direct``): on these shared cores the direct rate drifts within
    minutes, so the single stream is compared with direct runs of the same moments, as ``bench llm`` does."""
    async with _client(url, key) as http:
        await asyncio.gather(*(_chat(http, 100 + n) for n in range(8)))  # warm every worker placement picks
        results: dict[str, float] = {}
        singles, directs = [], []
        for n in range(3):
            tokens, first, done = await _chat(http, 200 + n)
            singles.append((tokens - 1) / max(done - first, 1e-9))
            directs.append(direct_stream(llm, 200 + n))
        results["single"], results["single_direct"] = sorted(singles)[1], sorted(directs)[1]
        for concurrency in CONCURRENCY:
            totals = []
            for round_ in range(ROUNDS if concurrency <= 8 else 1):  # 32 chats take ~20 s a round here
                start = time.perf_counter()
                chats = await asyncio.gather(*(_chat(http, 300 + 50 * round_ + n) for n in range(concurrency)))
                totals.append(sum(c[0] for c in chats) / (time.perf_counter() - start))
            results[f"total_{concurrency}"] = sorted(totals)[len(totals) // 2]
        return results


async def _rounds(url: str, key: str, chats: int, rounds: int) -> int:
    """``rounds`` times ``chats`` concurrent chats; the completion tokens they made."""
    async with _client(url, key) as http:
        made = 0
        for round_ in range(rounds):
            made += sum(c[0] for c in await asyncio.gather(*(_chat(http, 500 + 10 * round_ + n)
                                                             for n in range(chats))))
        return made


async def _behind_a_burst(url: str, key: str, other_key: str) -> dict[str, float]:
    """Another account's chat: its first token on the idle network, then sent a second into one account's burst
    of ``BURST`` chats (p50 of three each)."""
    async def first_token(http: httpx.AsyncClient, n: int) -> float:
        chat = await stream_chat(http, _messages(n), TOKENS)
        return chat.first - chat.started

    async with _client(url, key) as burst, _client(url, other_key) as other:
        idle = [await first_token(other, 700 + n) for n in range(3)]
        behind = []
        for round_ in range(3):
            chats = [asyncio.create_task(_chat(burst, 800 + 50 * round_ + n)) for n in range(BURST)]
            await asyncio.sleep(1.0)
            behind.append(await first_token(other, 703 + round_))
            await asyncio.gather(*chats)
    return {"other_idle": sorted(idle)[1], "other_behind": sorted(behind)[1]}


def network_rows(hosts: int, llm: Any) -> tuple[dict[str, float], Cost | None]:
    """The totals and single-stream rates; on one host also the CPU per token by process at 8 chats."""
    from bench.bench_network import _free_port

    with tempfile.TemporaryDirectory(prefix="archipelag-bench-load-") as state:
        settings = Settings(state_dir=Path(state), api_port=_free_port(), ray_head_port=_free_port(),
                            rate_limit_per_min=0, ray_auth="disabled", queue_timeout_s=600)
        settings.tiers.standard.cpus = float(THREADS)  # each worker gets as many cores as the direct run
        network = start_network(settings, hosts=hosts)
        try:
            results = asyncio.run(_load(network.url, network.api_key, llm))
            if hosts > 1:
                return results, None
            ledger = network.coordinator.ledger
            _, other_key = ledger.create_api_key(ledger.create_account("other@example.org", 10**12).id, "bench",
                                                 ("read", "write"))
            results |= asyncio.run(_behind_a_burst(network.url, network.api_key, other_key))
            return results, cost_of(network, lambda: asyncio.run(_rounds(network.url, network.api_key, 8, 3)))
        finally:
            network.stop()


def cpu_rows(cost: Cost) -> list[Row]:
    """Where the CPU of 8 concurrent chats goes, per token: the model worker, the network's own processes, and
    the costliest of those (what takes the cores a decoder's second thread would use)."""
    ms = 1000
    worker = sum(s for role, s in cost.per_unit.items() if role.startswith("container"))
    own = {role: s for role, s in cost.per_unit.items() if not role.startswith("container")}
    rows: list[Row] = [
        ("network 1 host, 8 concurrent: CPU per token, the model worker", f"{ms * worker:.2f} ms",
         f"{cost.units} tokens in {cost.seconds:.1f} s ({cost.units / cost.seconds:.1f} tok/s)"),
        ("network 1 host, 8 concurrent: CPU per token, the network's own", f"{ms * sum(own.values()):.2f} ms",
         "every other process of the network, its idle background over as long taken off"),
    ]
    costliest = sorted(own.items(), key=lambda item: -item[1])[:6]
    return rows + [(f"  cpu: {role}", f"{ms * s:.2f} ms", "") for role, s in costliest]


def run() -> list[Row]:
    load = os.getloadavg()[0]
    steps = step_rows()
    alone = decoder_alone_tps(8)
    llm = direct_model()
    direct, direct_total = direct_tps(llm)
    (one, cost), (three, _) = network_rows(1, llm), network_rows(3, llm)
    rows: list[Row] = [("direct llama-cpp-python, 1 stream (baseline)", f"{direct:.1f} tok/s",
                        f"{THREADS} thread(s), {TOKENS} tokens, after the first token"),
                       ("direct llama-cpp-python, 1 chat: total (baseline of the totals)", f"{direct_total:.1f} tok/s",
                        "its tokens over the time from the call to its last token, as each total is timed"),
                       ("llm-chat's batched decoder alone, 8 chats in process: total", f"{alone:.1f} tok/s",
                        (f"{alone / direct_total:.2f}× direct: the engine's own batched rate, no network; "
                         f"the 1-host network's 8 chats made {one['total_8'] / alone:.0%} of it"))]
    for name, net in (("1 host", one), ("3 hosts", three)):
        for concurrency in CONCURRENCY:
            total = net[f"total_{concurrency}"]
            aim = " (aim ≥ 2.5×)" if concurrency == 8 and name == "1 host" else ""
            rows.append((f"network {name}, {concurrency} concurrent: total", f"{total:.1f} tok/s",
                         f"{total / direct_total:.2f}× direct{aim}; {total / direct:.2f}× its rate after its first"))
        rows.append((f"network {name}, 1 stream after first token", f"{net['single']:.1f} tok/s",
                     (f"{net['single'] / net['single_direct']:.3f} of direct run right after each "
                      f"({net['single_direct']:.1f} tok/s; aim ≥ 0.99)")))
    rows += [("network 1 host, another account's chat: first token, idle network (baseline)",
              f"{1000 * one['other_idle']:.0f} ms", "p50 of 3"),
             (f"network 1 host, another account's chat 1 s into a burst of {BURST}: first token",
              f"{one['other_behind']:.2f} s", "p50 of 3; the burst's account waits its turns (8 chats run at once)")]
    if cost is not None:
        rows += cpu_rows(cost)
    rows.append(("machine load (1-min average) at start", f"{load:.2f}", f"{os.cpu_count()} cores"))
    return steps + rows


