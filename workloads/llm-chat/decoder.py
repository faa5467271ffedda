"""The batched decoder: one llama.cpp context that generates for several chats at once, one sequence each.

What llama.cpp's own server does with parallel slots, on llama-cpp-python's low-level API: the context holds
``parallel`` sequences, each with its own KV cache of ``context_tokens`` cells (``kv_unified`` off: a chat's
attention sees only its own cells, laid out the same whether it runs alone or beside others; with flash attention,
which skips masked cells, that keeps temperature 0 the same text in any batch). One thread runs the loop; each step
builds one ``llama_batch`` holding the next token of every generating chat and a chunk of every new chat's prompt
(at most ``BATCH_TOKENS`` in all, so a long prompt does not stall the streams already running), calls
``llama_decode`` once, and samples each chat's next token with its own sampler chain (the chain
llama-cpp-python's ``create_completion`` builds: greedy at temperature 0, else top-k 40, top-p, min-p 0.05,
temperature and a seeded draw). A chat joins between steps; a finished or cancelled one frees its sequence at
once, so the next chat can take it.

A step of N one-token chats is not always cheaper than N steps of one: llama.cpp sends a batch through its tiled
matrix kernels, which on this project's 2-core EPYC cost 36 ms for 2 chats where one chat's step costs 7.4 ms, and
win only from about 6 chats (8: 49 ms against 60). Where that line lies depends on the CPU and the weights, so the
decoder measures as it goes (``_Costs``) and, while no prompt is being read, decodes the chats apart, each in a step
of its own, when that is what costs less here.

The same goes for threads. A step of one chat is bound by memory, not compute: on this project's machine it costs
the same on one thread as on two (6.4 ms), while a step of 8 takes half as long on two (18.7 ms against 34). And
where the network's own processes share the host's cores, the second thread waits at llama.cpp's barriers for a
core that is busy: through the network, one chat made 78 tok/s on two threads and 103 on one. So each step size
runs on one thread or on all the worker's threads, whichever has cost less here (``_Threads``, measured as it
goes, as ``_Costs`` is); a prompt's chunk always takes them all.

A freed sequence keeps its cache, as llama.cpp's server keeps a slot's prompt: a new chat takes the free sequence
whose cache begins the way its prompt does for the most tokens (ties: the lowest id), drops the rest
(``llama_memory_seq_rm``) and evaluates only what follows. The chat template's system preamble, and a conversation's
earlier turns, are not evaluated again; a warm chat's first token costs its new tokens only, as it does in
llama-cpp-python's own ``Llama``, which keeps the last prompt's cache the same way.

Text leaves as pieces on each chat's queue: bytes that are not yet a whole UTF-8 character are held back, and so
is the tail that could still grow into a stop string; a stop string ends the chat before it (the text after it
is never shown). Ends: an end-of-generation token or a stop string (``stop``), ``max_tokens`` sampled
(``length``), or a cancel. Sequences go in the batch in seq-id order and take the lowest free id: with
per-sequence caches llama.cpp puts only consecutive ids into one micro-batch, so holes cost extra passes.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

# llama.cpp's threads meet at OpenMP barriers hundreds of times a decode. Spinning there (OpenMP's default) is fast
# on idle cores, but on a host whose cores the network's own processes share, a spinning thread holds the core its
# partner needs: measured here with 2 threads under load, 8 chats made 7 tok/s spinning and 83-102 tok/s sleeping.
# OpenMP reads it when llama.cpp's library loads, so before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp
from llama_cpp._internals import LlamaModel

BATCH_TOKENS = 512  # tokens one llama_decode call takes: every chat's next token, then prompt chunks
TOP_K = 40  # the rest of llama-cpp-python's create_completion defaults, so a seed gives the text it gave
MIN_P = 0.05
EXPLORE_EVERY = 64  # the mode not taken for N chats is measured again once per this many steps of N
WEIGHT = 0.2  # of the newest measurement in a moving average


@dataclass(frozen=True)
class Finish:
    """How a chat ended: ``stop`` or ``length``, the tokens it sampled (an end-of-generation token not counted),
    and how many of its prompt's tokens it found in the cache (not evaluated again)."""

    reason: str
    completion_tokens: int
    cached_tokens: int = 0


class DecodeFailed(RuntimeError):
    """llama_decode failed; every chat in that step ends with it."""


@dataclass(eq=False)
class Chat:
    """One chat's request and its output: ``pieces()`` yields text as it is made, then returns its Finish."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stops: list[str]
    _out: queue.SimpleQueue[str | Finish | Exception] = field(default_factory=queue.SimpleQueue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating; the decoder frees the chat's sequence before its next step."""
        self._cancelled.set()

    def next(self, timeout_s: float) -> str | Finish | None:
        """The next piece or the Finish; None when nothing came within ``timeout_s``. Raises what failed it."""
        try:
            item = self._out.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item


class _Costs:
    """What decoding has cost here (moving averages, seconds): a step of one chat, and a step of N chats together.
    ``apart(n)`` says whether n generating chats go cheaper one step each; a batch size not yet measured is
    measured first, and the mode not taken is measured again now and then, so a busy moment is not kept for good.
    Decoder thread only."""

    def __init__(self) -> None:
        self.one: float | None = None
        self.together: dict[int, float] = {}
        self._steps: dict[int, int] = {}

    def apart(self, n: int) -> bool:
        if n < 2 or self.one is None:
            return False
        step = self._steps[n] = self._steps.get(n, 0) + 1
        together = self.together.get(n)
        if together is None:
            return False
        cheaper = n * self.one < together
        return not cheaper if step % EXPLORE_EVERY == 0 else cheaper

    def took(self, n: int, seconds: float) -> None:
        if n == 1:
            self.one = _average(self.one, seconds)
        else:
            self.together[n] = _average(self.together.get(n), seconds)


class _Threads:
    """How many threads a step of n chats runs on: one, or all ``most`` the worker has, whichever has cost less
    here for steps of n (each is measured first; the other is measured again once per ``EXPLORE_EVERY`` steps of
    n). Decoder thread only."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.cost: dict[tuple[int, int], float] = {}  # (chats, threads) → a moving average, seconds
        self._steps: dict[int, int] = {}

    def pick(self, n: int) -> int:
        if self.most == 1:
            return 1
        options = (1, self.most)
        for threads in options:
            if (n, threads) not in self.cost:
                return threads
        step = self._steps[n] = self._steps.get(n, 0) + 1
        best = self.best(n)
        if step % EXPLORE_EVERY == 0:
            return self.most if best == 1 else 1
        return best

    def best(self, n: int) -> int:
        """The thread count that has cost least for steps of n so far (all of them before any is measured)."""
        measured = [threads for threads in (1, self.most) if (n, threads) in self.cost]
        return min(measured, key=lambda threads: self.cost[(n, threads)], default=self.most)

    def took(self, n: int, threads: int, seconds: float) -> None:
        self.cost[(n, threads)] = _average(self.cost.get((n, threads)), seconds)


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + WEIGHT * (new - old)


class _Slot:
    """A chat in the decoder: its sequence id, sampler chain, position and text state. Decoder thread only."""

    def __init__(self, chat: Chat, seq: int, kept: int = 0) -> None:
        self.chat = chat
        self.seq = seq
        self.kept = kept
        self.cached = list(chat.prompt[:kept])  # the tokens in the sequence's cache, in order
        self.pending = list(chat.prompt[kept:])  # prompt tokens not yet decoded (the cache holds the first kept)
        self.pos = kept  # the next token's position in the sequence
        self.last = -1  # the token sampled last, to decode next
        self.sampled = 0
        self.sampler = _sampler_chain(chat.temperature, chat.top_p, chat.seed)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded text so far (whole characters)
        self.shown = 0  # how much of it went out

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self.sampler)


def _sampler_chain(temperature: float, top_p: float, seed: int) -> Any:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if temperature == 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    for sampler in (llama_cpp.llama_sampler_init_top_k(TOP_K), llama_cpp.llama_sampler_init_top_p(top_p, 1),
                    llama_cpp.llama_sampler_init_min_p(MIN_P, 1), llama_cpp.llama_sampler_init_temp(temperature),
                    llama_cpp.llama_sampler_init_dist(seed)):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain


class Decoder:
    """Up to ``parallel`` chats generated together (see the module docstring). ``submit`` is thread-safe."""

    def __init__(self, model: LlamaModel, parallel: int, context_tokens: int, threads: int) -> None:
        self.parallel = parallel
        self.context_tokens = context_tokens
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_tokens * parallel
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = parallel
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        # Flash attention skips a chat's masked cells outright, so its attention sums the same terms in the same
        # order however long the batch pads its stream; without it the sums run over the padding and temperature
        # 0 drifts with the company a chat keeps (measured: the same chat, alone and among 7, diverged).
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self.model = model  # the context must not outlive it; request threads tokenize with it
        self._vocab = model.vocab
        self._ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context for the batched decoder")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._waiting: queue.SimpleQueue[Chat] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._slots: dict[int, _Slot] = {}  # by sequence id
        self._kept: dict[int, list[int]] = {}  # a free sequence → the tokens its cache still holds
        self._costs = _Costs()
        self._threads = _Threads(threads)
        self._threads_now = threads
        threading.Thread(target=self._loop, name="decoder", daemon=True).start()

    def submit(self, chat: Chat) -> Chat:
        """Queue a chat; it joins the batch at the next step with a free sequence."""
        if len(chat.prompt) + 1 > self.context_tokens:
            raise ValueError(f"a prompt of {len(chat.prompt)} tokens does not fit {self.context_tokens}")
        self._waiting.put(chat)
        self._wake.set()
        return chat

    def _loop(self) -> None:
        while True:
            self._admit()
            if not self._slots:
                self._wake.wait()
                self._wake.clear()
                continue
            self._step()

    def _admit(self) -> None:
        while len(self._slots) < self.parallel:
            try:
                chat = self._waiting.get_nowait()
            except queue.Empty:
                return
            if chat._cancelled.is_set():
                continue
            free = [s for s in range(self.parallel) if s not in self._slots]
            seq, kept = max(((s, _common(self._kept.get(s, []), chat.prompt)) for s in free),
                            key=lambda choice: (choice[1], -choice[0]))
            kept = min(kept, len(chat.prompt) - 1)  # at least one token decoded: its logits give the first sample
            if not llama_cpp.llama_memory_seq_rm(self._memory, seq, kept, -1):
                llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
                kept = 0
            self._kept.pop(seq, None)
            self._slots[seq] = _Slot(chat, seq, kept)

    def _step(self) -> None:
        for slot in [s for s in self._slots.values() if s.chat._cancelled.is_set()]:
            self._end(slot, None)
        reading = any(s.pending for s in self._slots.values())  # a prompt's chunk: batched, and not timed
        if not reading and self._costs.apart(len(self._slots)):
            self._step_apart()
            return
        outputs = self._fill()
        if not outputs:
            return
        if not self._decode(None if reading else len(outputs)):
            return
        for index, slot in outputs:
            token = llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, index)
            self._take(slot, token)

    def _step_apart(self) -> None:
        """Each generating chat's next token in a step of its own (cheaper here than one step of all of them)."""
        for seq in sorted(self._slots):
            slot = self._slots[seq]
            self._batch.n_tokens = 0
            self._put(slot, [slot.last])
            if not self._decode(1):
                return
            self._take(slot, llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, 0))

    def _decode(self, timed: int | None) -> bool:
        """llama_decode on the batch as filled (its time counted as a step of ``timed`` chats); on failure every
        chat ends with it."""
        threads = self._threads.pick(timed) if timed else self._threads.most
        if threads != self._threads_now:
            llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
            self._threads_now = threads
        start = time.perf_counter()
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            error = DecodeFailed(f"llama_decode failed with status {status}")
            for slot in list(self._slots.values()):
                self._end(slot, error)
            return False
        if timed:
            took = time.perf_counter() - start
            self._threads.took(timed, threads, took)
            if threads == self._threads.best(timed):  # apart or together: judged at each one's best
                self._costs.took(timed, took)
        return True

    def _fill(self) -> list[tuple[int, _Slot]]:
        """Put this step's tokens in the batch, by sequence id; the batch positions whose logits are sampled."""
        self._batch.n_tokens = 0
        outputs: list[tuple[int, _Slot]] = []
        budget = BATCH_TOKENS - sum(1 for s in self._slots.values() if not s.pending)
        for seq in sorted(self._slots):
            slot = self._slots[seq]
            if slot.pending:
                if budget <= 0:
                    continue
                tokens = slot.pending[:budget]
                del slot.pending[:len(tokens)]
                budget -= len(tokens)
            else:
                tokens = [slot.last]
            last = self._put(slot, tokens)
            if not slot.pending:  # the prompt's last token, or a generated one: sample after it
                outputs.append((last, slot))
        return outputs

    def _put(self, slot: _Slot, tokens: list[int]) -> int:
        """Append ``tokens`` of the slot's sequence to the batch; the last one's index, which asks for logits
        when the slot samples after it (its prompt read, or a generated token)."""
        batch = self._batch
        n = batch.n_tokens
        slot.cached += tokens
        for token in tokens:
            batch.token[n] = token
            batch.pos[n] = slot.pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq
            batch.logits[n] = False
            slot.pos += 1
            n += 1
        batch.logits[n - 1] = not slot.pending
        batch.n_tokens = n
        return n - 1

    def _take(self, slot: _Slot, token: int) -> None:
        """A sampled token: its text out (less what may be a stop string or half a character), or the end."""
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._end(slot, Finish("stop", slot.sampled))
            return
        slot.sampled += 1
        slot.last = token
        slot.text += slot.utf8.decode(self._piece_of(token))
        stops = slot.chat.stops
        start = max(0, slot.shown - max((len(s) for s in stops), default=0))
        hits = [i for i in (slot.text.find(s, start) for s in stops) if i >= 0]
        if hits:
            self._show(slot, min(hits))
            self._end(slot, Finish("stop", slot.sampled))
            return
        if slot.sampled >= slot.chat.max_tokens:
            self._show(slot, len(slot.text))
            self._end(slot, Finish("length", slot.sampled))
            return
        self._show(slot, len(slot.text) - _stop_prefix(slot.text, stops))

    def _show(self, slot: _Slot, upto: int) -> None:
        if upto > slot.shown:
            slot.chat._out.put(slot.text[slot.shown:upto])
            slot.shown = upto

    def _end(self, slot: _Slot, outcome: Finish | Exception | None) -> None:
        """Free the chat's sequence (its cache kept for a chat that begins the same way, unless decoding failed)
        and tell it how it ended (nothing for a cancelled one: it stopped reading)."""
        del self._slots[slot.seq]
        slot.free()
        if isinstance(outcome, Exception):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        else:
            self._kept[slot.seq] = slot.cached
        if isinstance(outcome, Finish):
            outcome = replace(outcome, cached_tokens=slot.kept)
        if outcome is not None:
            slot.chat._out.put(outcome)

    def _piece_of(self, token: int) -> bytes:
        size = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if size < 0:  # longer than the buffer
            self._piece = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:size]


def _common(cached: list[int], prompt: list[int]) -> int:
    """How many tokens ``prompt`` begins with that ``cached`` begins with too."""
    size = 0
    for ours, theirs in zip(cached, prompt, strict=False):
        if ours != theirs:
            break
        size += 1
    return size


def _stop_prefix(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest

