"""llm-chat: chat completions with llama.cpp, one ``token`` event per generated piece.

Input  {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, …]}
       or {"prompt": str, "system_prompt"?: str};
       plus "max_tokens"? (1-4096, default 256), "temperature"? (0-2, default 0.7), "top_p"? (0-1, default 0.95),
       "stop"? (a string or a list of up to 4), "seed"? (0 to 2^31-1; random when absent).
Events status "loading model" (the first request of a worker), token {content} per piece, then
       done {usage: {prompt_tokens, completion_tokens}, seed, finish_reason: "stop"|"length", cached_tokens (the
       prompt's tokens found in the worker's cache, not evaluated again)}.

The model is the GGUF file the host mounted read-only at ``$ARCHIPELAG_MODEL`` (its SHA-256 checked against the
catalog before the container started); its own chat template formats the messages, and its stop strings end a
chat like the request's own. In worker mode the model is loaded once and serves request after request; when the
host multiplexes (the manifest's ``parallel``), up to that many chats are generated together by one batched
decoder (``decoder.py``), each with its own sequence, sampler, stops and limits; ``cancelled()`` is polled
between tokens. Threads: ``$ARCHIPELAG_THREADS``; layers go to the GPU when ``$ARCHIPELAG_GPU=1``.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
from typing import Any

from workload_io import (
    Cancelled,
    Done,
    InputError,
    cancelled,
    emit,
    int_field,
    number_field,
    parallel_requests,
    serve,
    text_field,
)

MAX_INPUT_BYTES = 4 * 1024 * 1024 + 64 * 1024  # 128 messages of 32 KB, and the rest of the request
MAX_MESSAGES = 128
MAX_MESSAGE_BYTES = 32 * 1024
MAX_TOKENS = 4096
ROLES = ("system", "user", "assistant", "tool")

CONTEXT_TOKENS = 2048  # per chat: each sequence has a KV cache of its own this size
_decoder: Any = None  # decoder.Decoder, made on first use and kept
_loading = threading.Lock()


def load_decoder() -> Any:
    """The batched decoder with the model loaded, made on first use (worker mode serves many chats with it)."""
    global _decoder
    with _loading:
        if _decoder is None:
            path = os.environ.get("ARCHIPELAG_MODEL")
            if not path or not os.path.isfile(path):
                raise RuntimeError("no model mounted: ARCHIPELAG_MODEL does not name a file")
            emit("status", message="loading model")
            import llama_cpp
            from decoder import Decoder
            from llama_cpp._internals import LlamaModel

            # llama-cpp-python prints every line llama.cpp logs (a context's set-up alone: about a thousand) unless
            # its logger says otherwise; only errors go to stderr, whose tail the host keeps for a failure's message.
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)

            params = llama_cpp.llama_model_default_params()
            params.n_gpu_layers = -1 if os.environ.get("ARCHIPELAG_GPU") == "1" else 0
            model = LlamaModel(path_model=path, params=params, verbose=False)
            threads = max(1, int(os.environ.get("ARCHIPELAG_THREADS", "1")))
            _decoder = Decoder(model, parallel_requests(), CONTEXT_TOKENS, threads)
    return _decoder


def messages_of(job: dict[str, Any]) -> list[dict[str, str]]:
    """The chat as a list of {role, content}; InputError naming what is wrong."""
    if "messages" in job:
        raw = job["messages"]
        if not isinstance(raw, list) or not raw:
            raise InputError("field 'messages' must be a non-empty list of {role, content} objects")
        if len(raw) > MAX_MESSAGES:
            raise InputError(f"at most {MAX_MESSAGES} messages, not {len(raw)}")
        messages = []
        for index, message in enumerate(raw):
            if not isinstance(message, dict):
                raise InputError(f"messages[{index}] must be an object with role and content")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise InputError(f"messages[{index}].role must be one of {', '.join(ROLES)}, not {role!r}")
            if not isinstance(content, str):
                raise InputError(f"messages[{index}].content must be a string")
            if len(content.encode()) > MAX_MESSAGE_BYTES:
                raise InputError(f"messages[{index}].content is longer than {MAX_MESSAGE_BYTES} bytes")
            messages.append({"role": role, "content": content})
        return messages
    prompt = text_field(job, "prompt")
    system = text_field(job, "system_prompt", required=False)
    assert prompt is not None
    for name, text in (("prompt", prompt), ("system_prompt", system or "")):
        if len(text.encode()) > MAX_MESSAGE_BYTES:
            raise InputError(f"field {name!r} is longer than {MAX_MESSAGE_BYTES} bytes")
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def stops_of(job: dict[str, Any]) -> list[str]:
    stop = job.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise InputError("field 'stop' must be a non-empty string or a list of up to 4 of them")
    return stops


def parameters(job: dict[str, Any]) -> dict[str, Any]:
    """Everything but the model: checked before the model is touched, so bad input fails fast."""
    seed = int_field(job, "seed", None, 0, 2**31 - 1)
    return {
        "messages": messages_of(job),
        "max_tokens": int_field(job, "max_tokens", 256, 1, MAX_TOKENS),
        "temperature": number_field(job, "temperature", 0.7, 0.0, 2.0),
        "top_p": number_field(job, "top_p", 0.95, 0.0, 1.0),
        "stop": stops_of(job),
        "seed": random.randrange(2**31) if seed is None else seed,
    }


def prompt_tokens(model: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
    """The chat formatted by the model's own template, as tokens, and the template's stop strings."""
    formatter = chat_formatter(model)
    if formatter is None:
        raise InputError("the model has no chat template; send a model with one")
    formatted = formatter(messages=messages)
    tokens = model.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)
    stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
    return tokens, [s for s in stop if s]


@functools.cache
def chat_formatter(model: Any) -> Any:
    """The model's chat template, compiled once; None when the model has none."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = model.metadata().get("tokenizer.chat_template")
    if not template:
        return None
    eos = model.token_get_text(model.token_eos())
    bos = model.token_get_text(model.token_bos())
    return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)


def handle(job: dict[str, Any]) -> Done:
    from decoder import Chat, Finish

    params = parameters(job)
    decoder = load_decoder()
    tokens, template_stops = prompt_tokens(decoder.model, params["messages"])
    if len(tokens) + 1 >= CONTEXT_TOKENS:
        raise InputError(f"the chat is {len(tokens)} tokens; this model's context holds {CONTEXT_TOKENS}")
    max_tokens = min(params["max_tokens"], CONTEXT_TOKENS - len(tokens))
    chat = decoder.submit(Chat(tokens, max_tokens, params["temperature"], params["top_p"], params["seed"],
                               params["stop"] + template_stops))
    try:
        while not isinstance(item := chat.next(timeout_s=0.05), Finish):
            if cancelled():
                raise Cancelled
            if item:
                emit("token", content=item)
    finally:
        chat.cancel()  # frees its sequence at once if it is still generating (a cancel, an error); else a no-op
    return Done(seed=params["seed"], usage={"prompt_tokens": len(tokens), "completion_tokens": item.completion_tokens},
                extra={"finish_reason": item.reason, "cached_tokens": item.cached_tokens})


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES, concurrent=True)
