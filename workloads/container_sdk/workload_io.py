"""Workload I/O: how a container workload reads its job's input and writes protocol events (DESIGN §4).

Shared by every Python program in ``workloads/<slug>/``; ``workloads/build_containers.py`` stages this file
into each image's ``/app/vendor`` beside the third-party libraries, so images never import ``archipelag``.

A program calls ``serve(handle, max_input_bytes=…)``: the input is one JSON object read from stdin (at most
``max_input_bytes``), ``handle(job)`` returns the ``done`` output (None: a ``done`` without one; a ``Done`` for
extra fields such as ``usage`` or ``seed``) and may ``emit`` status, token, progress or image events on the way.

Worker mode (the host sets ``ARCHIPELAG_WORKER=1``; used by workloads that keep a model loaded): the same
``handle`` serves many jobs one after another in one long-lived container. Each stdin line is one request,
``{"id": n, "input": {...}}``, answered by its events and exactly one final ``done`` or ``error``; a line
``{"cancel": n}`` asks the running request ``n`` to stop — ``handle`` polls ``cancelled()`` between steps and
raises ``Cancelled`` (an ``error`` event "cancelled", the worker goes on). EOF on stdin ends the worker.
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


_cancel_flag = threading.Event()


def cancelled() -> bool:
    """True once the host asked the running request to stop (always False outside worker mode)."""
    return _cancel_flag.is_set()


def emit(kind: str, **fields: Any) -> None:
    """Write one event as a JSON line and flush it, so the host streams it as it comes."""
    line = json.dumps({"type": kind, **fields}, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(line.encode()) > LINE_LIMIT_BYTES:
        raise InputError(f"the {kind} event would be {len(line.encode())} bytes, past the "
                         f"{LINE_LIMIT_BYTES}-byte line limit; send a smaller input")
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


def serve(handle: Callable[[dict[str, Any]], Any], max_input_bytes: int) -> NoReturn:
    """Run one job: read the input, call ``handle``, write ``done`` with its output; exit.
    With ``ARCHIPELAG_WORKER=1`` in the environment, serve requests until stdin ends instead."""
    if os.environ.get("ARCHIPELAG_WORKER") == "1":
        serve_forever(handle, max_input_bytes)
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


def serve_forever(handle: Callable[[dict[str, Any]], Any], max_input_bytes: int) -> NoReturn:
    """Worker mode: answer requests one after another until stdin ends (see the module docstring)."""
    requests: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
    current = [-1]  # the request id being served; the reader thread compares cancels against it
    lock = threading.Lock()

    def read() -> None:
        for raw in sys.stdin.buffer:
            try:
                message = json.loads(raw) if len(raw) <= max_input_bytes + 64 else {"id": -1, "input": None}
            except (ValueError, UnicodeDecodeError):
                message = {"id": -1, "input": None}
            if isinstance(message, dict) and "cancel" in message:
                with lock:
                    if message["cancel"] == current[0]:
                        _cancel_flag.set()
                continue
            ident = message.get("id", -1) if isinstance(message, dict) else -1
            requests.put((ident if isinstance(ident, int) else -1,
                          message.get("input") if isinstance(message, dict) else None))
        requests.put(None)

    threading.Thread(target=read, name="requests", daemon=True).start()
    while (request := requests.get()) is not None:
        ident, job = request
        with lock:
            current[0] = ident
            _cancel_flag.clear()
        try:
            if not isinstance(job, dict):
                raise InputError("the request is not a JSON object with an input object, or is too large")
            _done(handle(job))
        except Cancelled:
            emit("error", message="cancelled")
        except InputError as exc:
            emit("error", message=str(exc))
        except MemoryError:
            emit("error", message="the workload ran out of memory on this input; send a smaller one")
            sys.exit(1)
        except Exception as exc:  # noqa: BLE001 - the one place a workload reports its own bug
            traceback.print_exc(file=sys.stderr)
            emit("error", message=f"internal error in the workload ({type(exc).__name__})")
        finally:
            with lock:
                current[0] = -1
                _cancel_flag.clear()
    sys.exit(0)
