"""The Python client of an Archipelag network: ``Client`` (and ``AsyncClient``) over the HTTP API.

    from archipelag.sdk import Client

    with Client() as client:                      # ARCHIPELAG_API_KEY from the environment
        ref = client.submit("llm-chat", {"prompt": "hello"})
        for event in ref:                         # token, status, progress … then done or error
            print(event)
        print(client.get(ref))                    # the job's output; JobFailed if it did not complete

        batch = client.submit_batch("wasm-hash", [{"text": "a"}, {"text": "b"}], max_parallelism=8)
        print(client.get(client.batch_ref(batch.id), timeout=60))  # the children's outputs, in input order

        for piece in client.chat_stream("Tell me a story", max_tokens=64):
            print(piece, end="", flush=True)      # tokens as they come
        print(client.chat("hello").content)       # ChatResult: content, usage, job_id, finish_reason
        client.generate_image("a red fox", out="fox.png", on_progress=lambda step, total: ...)
"""

from archipelag.sdk.aio import AsyncBatchRef, AsyncClient, AsyncJobRef
from archipelag.sdk.client import DEFAULT_URL, BatchRef, Client, JobRef
from archipelag.sdk.errors import JobFailed, ReceiptInvalid, Unreachable, WaitTimeout
from archipelag.sdk.generation import AsyncChatStream, ChatResult, ChatStream, ImageResult
from archipelag.sdk.models import (
    TERMINAL_STATES,
    Account,
    ApiKey,
    AskingPrices,
    BatchChild,
    BatchConfig,
    BatchJob,
    BatchProgress,
    Event,
    Host,
    HostCapabilities,
    HostKarma,
    Job,
    JobReceipt,
    JobState,
    MarketHistory,
    MarketRate,
    Page,
    PriceBucket,
    Usage,
    Workload,
)

__all__ = [
    "DEFAULT_URL",
    "TERMINAL_STATES",
    "Account",
    "ApiKey",
    "AskingPrices",
    "AsyncBatchRef",
    "AsyncChatStream",
    "AsyncClient",
    "AsyncJobRef",
    "BatchChild",
    "BatchConfig",
    "BatchJob",
    "BatchProgress",
    "BatchRef",
    "ChatResult",
    "ChatStream",
    "Client",
    "Event",
    "Host",
    "HostCapabilities",
    "HostKarma",
    "ImageResult",
    "Job",
    "JobFailed",
    "JobReceipt",
    "JobRef",
    "JobState",
    "MarketHistory",
    "MarketRate",
    "Page",
    "PriceBucket",
    "ReceiptInvalid",
    "Unreachable",
    "Usage",
    "WaitTimeout",
    "Workload",
]
