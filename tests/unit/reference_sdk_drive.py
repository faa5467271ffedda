"""Run by the reference SDK's own virtualenv (``python -I reference_sdk_drive.py URL KEY``), never imported here:
calls every public method of its ``Client`` and ``AsyncClient`` (the server-side batch ones too) against the
network at URL, and prints one JSON object, method → {"ok": what it returned} or {"raised": "Class: message"}.
A failing call does not stop the others. Chat jobs of the model network answer the prompt's words as tokens.
"""

import asyncio
import base64
import json
import sys
from collections.abc import Callable
from typing import Any

from archipelag import AsyncClient, Client, exceptions

URL, KEY = sys.argv[1], sys.argv[2]
IMAGE = {"width": 64, "height": 96, "steps": 2, "seed": 5, "workload": "sd-diffusers"}
report: dict[str, Any] = {}


def record(name: str, call: Callable[[], Any]) -> Any:
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001 - the report says what went wrong, method by method
        report[name] = {"raised": f"{type(exc).__name__}: {exc}"}
        return None
    report[name] = {"ok": value}
    return value


async def arecord(name: str, call: Callable[[], Any]) -> Any:
    try:
        value = await call()
    except Exception as exc:  # noqa: BLE001
        report[name] = {"raised": f"{type(exc).__name__}: {exc}"}
        return None
    report[name] = {"ok": value}
    return value


def image_summary(result: Any) -> dict[str, Any]:
    png = base64.b64decode(result.image_data).startswith(b"\x89PNG")
    return {"png": png, "format": result.image_format, "width": result.width, "height": result.height,
            "seed": result.seed, "job_id": type(result.job_id).__name__}


def events(stream: Any) -> list[list[Any]]:
    return [[e.type.value, e.content, e.error, e.usage.completion_tokens if e.usage else None] for e in stream]


def sync_calls() -> None:
    with Client(api_key=KEY, base_url=URL) as client:
        record("get_account", lambda: client.get_account().model_dump(mode="json"))
        record("list_workloads", lambda: sorted(w.slug for w in client.list_workloads()))
        record("get_workload", lambda: client.get_workload("llm-chat").runtime_type.value)
        job = record("create_job", lambda: client.create_job("llm-chat", {"prompt": "hello reference sdk"}))
        if job is not None:
            report["create_job"] = {"ok": {"id": job.id, "status": job.status.value}}
            record("get_job", lambda: client.get_job(job.id).id == job.id)
            record("wait_for_job", lambda: client.wait_for_job(job.id, poll_interval=0.02, timeout=10).output)
            record("list_jobs", lambda: job.id in [j.id for j in client.list_jobs(limit=5)])
            record("stream_job", lambda: events(client.stream_job(job.id)))
        parked = client.create_job("llm-chat", {"prompt": "park"})
        record("cancel_job", lambda: client.cancel_job(parked.id).status.value)
        record("chat", lambda: client.chat("one two three", system_prompt="be brief", max_tokens=8,
                                           temperature=0.5).content)
        record("chat_stream", lambda: events(client.chat_stream("four five")))
        record("generate_image", lambda: image_summary(client.generate_image("a fox", **IMAGE)))
        made = record("batch", lambda: client.batch([{"workload": "llm-chat", "input": {"prompt": "six"}},
                                                     {"workload": "llm-chat", "input": {"prompt": "seven"}}]))
        if made is not None:
            report["batch"] = {"ok": len(made)}
            record("wait_all", lambda: [j.output for j in client.wait_all(made, poll_interval=0.02, timeout=10)])
        submitted = record("submit_batch", lambda: client.submit_batch(
            "llm-chat", [{"prompt": "ten"}, {"prompt": "eleven"}], max_parallelism=1, bid_price=0.02))
        if submitted is not None:
            report["submit_batch"] = {"ok": {"id": submitted.id, "chunk_count": submitted.batch.chunk_count,
                                             "children": len(submitted.children)}}
            record("get_batch_status", lambda: client.get_batch_status(submitted.id).chunk_count)
            record("wait_for_batch", lambda: {
                "state": client.wait_for_batch(submitted.id, poll_interval=0.05, timeout=20).state,
                "output": json.loads(client.get_job(submitted.id).output)})
        record("list_api_keys", lambda: [type(k.id).__name__ for k in client.list_api_keys()])
        created = record("create_api_key", lambda: client.create_api_key("reference"))
        if created is not None:
            key, full = created
            report["create_api_key"] = {"ok": {"name": key.name, "full_key_works": works(full)}}
            record("delete_api_key", lambda: [client.delete_api_key(key.id), works(full)])
        record("errors", lambda: [refused(lambda: client.get_job("no-such-job")), refused(
            lambda: Client(api_key="ak_wrong", base_url=URL).get_account())])
    record("close", lambda: Client(api_key=KEY, base_url=URL).close())


def works(key: str) -> bool:
    try:
        with Client(api_key=key, base_url=URL) as other:
            other.get_account()
    except exceptions.AuthenticationError:
        return False
    return True


def refused(call: Callable[[], Any]) -> str:
    try:
        call()
    except (exceptions.NotFoundError, exceptions.AuthenticationError) as exc:
        return type(exc).__name__
    return "answered"


async def async_calls() -> None:
    async with AsyncClient(api_key=KEY, base_url=URL) as client:
        job = await arecord("async create_job", lambda: client.create_job("llm-chat", {"prompt": "async hi"}))
        if job is not None:
            report["async create_job"] = {"ok": {"id": job.id, "status": job.status.value}}
            await arecord("async get_job", lambda: _same(client.get_job(job.id), job.id))
            await arecord("async wait_for_job", lambda: _output(client.wait_for_job(job.id, poll_interval=0.02,
                                                                                     timeout=10)))
            await arecord("async stream_job", lambda: _events(client.stream_job(job.id)))
        await arecord("async chat", lambda: _content(client.chat("eight nine", max_tokens=8)))
        await arecord("async chat_stream", lambda: _events(client.chat_stream("ten")))
        await arecord("async generate_image", lambda: _image(client.generate_image("a cat", **IMAGE)))
        batch = await arecord("async submit_batch", lambda: client.submit_batch("llm-chat", [{"prompt": "twelve"}]))
        if batch is not None:
            report["async submit_batch"] = {"ok": batch.id}
            await arecord("async get_batch_status", lambda: _chunks(client.get_batch_status(batch.id)))
            await arecord("async wait_for_batch", lambda: _state(client.wait_for_batch(batch.id, poll_interval=0.05,
                                                                                         timeout=20)))
    await arecord("async close", lambda: AsyncClient(api_key=KEY, base_url=URL).close())


async def _same(pending: Any, job_id: str) -> bool:
    return (await pending).id == job_id


async def _output(pending: Any) -> Any:
    return (await pending).output


async def _content(pending: Any) -> Any:
    return (await pending).content


async def _events(stream: Any) -> list[list[Any]]:
    return events([e async for e in stream])


async def _chunks(pending: Any) -> Any:
    return (await pending).chunk_count


async def _state(pending: Any) -> Any:
    return (await pending).state


async def _image(pending: Any) -> dict[str, Any]:
    return image_summary(await pending)


sync_calls()
asyncio.run(async_calls())
print(json.dumps(report, default=str))
