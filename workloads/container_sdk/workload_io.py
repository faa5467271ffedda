"""Workload I/O: how a container workload reads its job's input and writes protocol events (DESIGN §4).

Shared by every Python program in ``workloads/<slug>/``; ``workloads/build_containers.py`` stages this file
into each image's ``/app/vendor`` beside the third-party libraries, so images never import ``archipelag``.

A program calls ``serve(handle, max_input_bytes=…)``: the input is one JSON object read from stdin (at most
``max_input_bytes``), ``handle(job)`` returns the ``done`` output (None: a ``done`` without one; a ``Done`` for
extra fields such as ``usage`` or ``seed``) and may ``emit`` status, token, progress or image events on the way.

Worker mode (the host sets ``ARCHIPELAG_WORKER=1``; used by workloads that keep a model loaded): the same
``handle`` serves many jobs in one long-lived container. Each stdin line is one request,
``{"id": n, "input": {...}}``, answered by its events and exactly one final ``done`` or ``error``; a line
``{"cancel": n}`` asks request ``n`` to stop — ``handle`` polls ``cancelled()`` between steps and raises
``Cancelled`` (an ``error`` event "cancelled", the worker goes on). EOF on stdin ends the worker. Requests run one
after another, unless the host sets ``ARCHIPELAG_PARALLEL=n`` (n > 1, from the manifest's ``parallel``): then
requests overlap, every event line carries the id of the request it answers as ``"rid"``, and a program that
passes ``concurrent=True`` (its ``handle`` is thread-safe) has up to n of them in ``handle`` at once, each on its
own thread; ``emit`` and ``cancelled`` always speak for the request of the calling thread.
The model the host mounted read-only is at ``os.environ["ARCHIPELAG_MODEL"]`` (verified by SHA-256 before the
container starts); ``ARCHIPELAG_THREADS`` is the CPU budget in whole cores and ``ARCHIPELAG_GPU=1`` says a GPU
was passed in. Bad input raises ``InputError`` and becomes one ``error`` event (exit status 0); any other
exception becomes an ``error`` event saying it is an internal error (exit status 1) with the traceback on
stderr only — stdout carries nothing but events. Stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

LINE_LIMIT_BYTES = 4 * 1024 * 1024 - 4096  # the runtimes' default longest line, less a margin


class InputError(Exception):
    """The job's input is not what this workload takes; the message says what to send instead."""


class Cancelled(Exception):
    """The host asked the running request to stop (worker mode)."""


@dataclass
class Done:
    """What ``handle`` returns when the ``done`` event carries more than ``output``."""

    output: Any = None
    usage: dict[str, int] | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        found: dict[str, Any] = dict(self.extra)
        if self.output is not None:
            found["output"] = self.output
        if self.usage is not None:
            found["usage"] = self.usage
        if self.seed is not None:
            found["seed"] = self.seed
        return found


@dataclass
class _Request:
    """A request in worker mode: its id (``rid`` on its events when the worker is multiplexed) and its cancel."""

    ident: int
    tagged: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)


_NO_REQUEST = _Request(-1)  # a one-shot job: nothing to tag, never cancelled
_local = threading.local()  # .request: the request the calling thread serves
_stdout_lock = threading.Lock()  # one whole line at a time, whichever thread writes


def _current() -> _Request:
    request: _Request = getattr(_local, "request", _NO_REQUEST)
    return request


def cancelled() -> bool:
    """True once the host asked the calling thread's request to stop (always False outside worker mode)."""
    return _current().cancel.is_set()


def emit(kind: str, **fields: Any) -> None:
    """Write one event as a JSON line and flush it, so the host streams it as it comes. In a multiplexed worker
    the line carries the calling thread's request id."""
    request = _current()
    event = {"type": kind, **fields, **({"rid": request.ident} if request.tagged else {})}
    line = json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(line.encode()) > LINE_LIMIT_BYTES:
        raise InputError(f"the {kind} event would be {len(line.encode())} bytes, past the "
                         f"{LINE_LIMIT_BYTES}-byte line limit; send a smaller input")
    with _stdout_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_input(max_bytes: int) -> dict[str, Any]:
    """The job's input object from stdin; InputError when it is too large, not JSON, or not an object."""
    data = sys.stdin.buffer.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"the input is larger than this workload's limit of {max_bytes} bytes")
    try:
        job = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the input is not valid JSON ({exc})") from None
    if not isinstance(job, dict):
        raise InputError(f"the input must be a JSON object, not {type(job).__name__}")
    return job


def text_field(job: dict[str, Any], name: str, required: bool = True, allow_empty: bool = False) -> str | None:
    """``job[name]`` as a string; InputError when it is missing (and required), not a string, or empty."""
    if name not in job or job[name] is None:
        if required:
            raise InputError(f"missing field {name!r} (a string)")
        return None
    value = job[name]
    if not isinstance(value, str):
        raise InputError(f"field {name!r} must be a string, not {type(value).__name__}")
    if not value.strip() and not allow_empty:
        raise InputError(f"field {name!r} is empty")
    return value


def int_field(job: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    """``job[name]`` as an integer in [low, high]; ``default`` when absent."""
    value = job.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise InputError(f"field {name!r} must be a whole number from {low} to {high}")
    if not low <= int(value) <= high:
        raise InputError(f"field {name!r} must be from {low} to {high}, not {int(value)}")
    return int(value)


def number_field(job: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    """``job[name]`` as a finite number in [low, high]; ``default`` when absent."""
    value = job.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"field {name!r} must be a number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise InputError(f"field {name!r} must be from {low:g} to {high:g}, not {value:g}")
    return float(value)


def bool_field(job: dict[str, Any], name: str, default: bool) -> bool:
    value = job.get(name, default)
    if not isinstance(value, bool):
        raise InputError(f"field {name!r} must be true or false")
    return value


def choice_field(job: dict[str, Any], name: str, choices: tuple[str, ...], default: str | None) -> str:
    """``job[name]`` as one of ``choices`` (case-insensitive); ``default`` when absent (None: required)."""
    value = job.get(name)
    if value is None:
        if default is None:
            raise InputError(f"missing field {name!r} (one of {', '.join(choices)})")
        return default
    if not isinstance(value, str) or value.lower() not in choices:
        raise InputError(f"field {name!r} must be one of {', '.join(choices)}, not {value!r}")
    return value.lower()


def base64_field(job: dict[str, Any], name: str) -> bytes:
    """``job[name]`` decoded from base64 (standard or URL-safe, a ``data:`` URL prefix allowed)."""
    text = text_field(job, name)
    assert text is not None
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"field {name!r} is not valid base64") from None
    if not data:
        raise InputError(f"field {name!r} decodes to no bytes")
    return data


def _done(output: Any) -> None:
    if isinstance(output, Done):
        emit("done", **output.fields())
    else:
        emit("done", **({} if output is None else {"output": output}))


def serve(handle: Callable[[dict[str, Any]], Any], max_input_bytes: int, concurrent: bool = False) -> NoReturn:
    """Run one job: read the input, call ``handle``, write ``done`` with its output; exit.
    With ``ARCHIPELAG_WORKER=1`` in the environment, serve requests until stdin ends instead; ``concurrent``: the
    program's ``handle`` may run for several requests at once (on threads), when the host multiplexes."""
    if os.environ.get("ARCHIPELAG_WORKER") == "1":
        serve_forever(handle, max_input_bytes, _parallel() if concurrent else 1, _parallel() > 1)
    try:
        job = read_input(max_input_bytes)
        _done(handle(job))
    except InputError as exc:
        emit("error", message=str(exc))
        sys.exit(0)
    except MemoryError:
        emit("error", message="the workload ran out of memory on this input; send a smaller one")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the one place a workload reports its own bug
        traceback.print_exc(file=sys.stderr)
        emit("error", message=f"internal error in the workload ({type(exc).__name__}); the input may be "
                              "malformed in a way it does not recognise")
        sys.exit(1)
    sys.exit(0)


def parallel_requests() -> int:
    """How many requests the host may have in flight at once in this worker (1 outside a multiplexed worker)."""
    return _parallel() if os.environ.get("ARCHIPELAG_WORKER") == "1" else 1


def _parallel() -> int:
    try:
        return max(1, int(os.environ.get("ARCHIPELAG_PARALLEL", "1")))
    except ValueError:
        return 1


def serve_forever(handle: Callable[[dict[str, Any]], Any], max_input_bytes: int, threads: int = 1,
                  multiplexed: bool = False) -> NoReturn:
    """Worker mode: answer requests until stdin ends (see the module docstring), on ``threads`` threads;
    ``multiplexed``: every event carries its request's id."""
    requests: queue.SimpleQueue[tuple[_Request, Any] | None] = queue.SimpleQueue()
    live: dict[int, _Request] = {}  # read and not yet answered, by id; cancels look them up here
    lock = threading.Lock()

    def read() -> None:
        for raw in sys.stdin.buffer:
            try:
                message = json.loads(raw) if len(raw) <= max_input_bytes + 64 or multiplexed else None
            except (ValueError, UnicodeDecodeError):
                message = None
            if not isinstance(message, dict):
                message = {}
            if "cancel" in message:
                with lock:
                    if message["cancel"] in live:
                        live[message["cancel"]].cancel.set()
                continue
            ident = message.get("id", -1)
            if not isinstance(ident, int) or isinstance(ident, bool):
                if multiplexed:  # no id to answer to: the host never sends this
                    print("workload_io: a request line without an id was ignored", file=sys.stderr)
                    continue
                ident = -1
            job = message.get("input") if len(raw) <= max_input_bytes + 64 else None
            request = _Request(ident, tagged=multiplexed)
            with lock:
                live[ident] = request
            requests.put((request, job))
        for _ in range(threads):
            requests.put(None)

    def work() -> None:
        while (item := requests.get()) is not None:
            request, job = item
            _local.request = request
            try:
                if not _answer(handle, job):
                    sys.stdout.flush()
                    os._exit(1)  # out of memory: the worker is in no state to go on
            finally:
                _local.request = _NO_REQUEST
                with lock:
                    if live.get(request.ident) is request:
                        del live[request.ident]

    threading.Thread(target=read, name="requests", daemon=True).start()
    pool = [threading.Thread(target=work, name=f"request-{n}", daemon=True) for n in range(threads - 1)]
    for thread in pool:
        thread.start()
    work()
    for thread in pool:
        thread.join()
    sys.exit(0)


def _answer(handle: Callable[[dict[str, Any]], Any], job: Any) -> bool:
    """One request's events, ending in exactly one ``done`` or ``error``; False when the worker must exit."""
    try:
        if not isinstance(job, dict):
            raise InputError("the request is not a JSON object with an input object, or is too large")
        if cancelled():
            raise Cancelled
        _done(handle(job))
    except Cancelled:
        emit("error", message="cancelled")
    except InputError as exc:
        emit("error", message=str(exc))
    except MemoryError:
        emit("error", message="the workload ran out of memory on this input; send a smaller one")
        return False
    except Exception as exc:  # noqa: BLE001 - the one place a workload reports its own bug
        traceback.print_exc(file=sys.stderr)
        emit("error", message=f"internal error in the workload ({type(exc).__name__})")
    return True
