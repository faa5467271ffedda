from __future__ import annotations

import threading
from collections.abc import Iterator

from archipelag.actors.agent_actor import accepts_with_models
from archipelag.actors.host_agent import HostAgent
from archipelag.catalog import Manifest, ModelSpec
from archipelag.errors import BudgetExceeded, JobCancelled
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.settings import Settings


class ScriptedRuntime:
    """A stand-in runtime that yields the events (or raises the error) it was given."""

    name = "wasm"

    def __init__(self, events: list[Event], error: Exception | None = None, block: bool = False) -> None:
        self.events, self.error, self.block = events, error, block
        self.started = threading.Event()

    def run(self, spec: JobSpec, cancel: CancelToken) -> Iterator[Event]:
        self.started.set()
        yield from (dict(e) for e in self.events)
        if self.block:
            cancel.wait(10)
            raise JobCancelled("stopped")
        if self.error is not None:
            raise self.error

    def warm(self, now: float) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass


def a_spec(job_id: str = "j1", runtime: str = "wasm") -> JobSpec:
    manifest = Manifest(slug=WorkloadSlug("w"), name="w", description="", runtime=runtime, trust_level=0,
                        price_micro=0)
    return JobSpec(JobId(job_id), manifest, {}, Settings().limits_for(manifest.tier))


def agent_with(runtime: ScriptedRuntime, slots: int = 2) -> HostAgent:
    return HostAgent(HostId("h1"), {"wasm": runtime}, slots)


def test_events_are_numbered_from_zero_after_a_started_status() -> None:
    agent = agent_with(ScriptedRuntime([{"type": "token", "content": "a"}, {"type": "done"}]))
    events = list(agent.run(a_spec()))
    assert [e["seq"] for e in events] == [0, 1, 2]
    assert events[0]["type"] == "status" and events[-1]["type"] == "done"


def test_a_runtime_error_becomes_one_final_error_event_with_its_code() -> None:
    agent = agent_with(ScriptedRuntime([], BudgetExceeded("fuel budget of 10 instructions exhausted")))
    events = list(agent.run(a_spec()))
    assert events[-1] == {"type": "error", "message": "fuel budget of 10 instructions exhausted",
                          "code": "budget_exceeded", "seq": 1}


def test_a_runtime_bug_does_not_escape_the_agent() -> None:
    agent = agent_with(ScriptedRuntime([], RuntimeError("segfault-ish")))
    assert list(agent.run(a_spec()))[-1]["code"] == "workload_error"
    assert agent.load().active_jobs == 0


def test_a_workload_without_a_final_event_is_ended_by_the_agent() -> None:
    events = list(agent_with(ScriptedRuntime([{"type": "token", "content": "x"}])).run(a_spec()))
    assert events[-1]["code"] == "protocol_violation"


def test_cancel_interrupts_a_running_job_and_frees_its_slot() -> None:
    runtime = ScriptedRuntime([], block=True)
    agent = agent_with(runtime)
    result: list[Event] = []
    thread = threading.Thread(target=lambda: result.extend(agent.run(a_spec("j9"))))
    thread.start()
    runtime.started.wait(5)
    assert agent.load().running == ("j9",)
    assert agent.cancel(JobId("j9"))
    thread.join(5)
    assert result[-1]["code"] == "cancelled" and result[-1]["message"] == "cancelled by the user"
    assert agent.load().active_jobs == 0
    assert not agent.cancel(JobId("j9"))


def test_a_full_host_turns_a_job_away_before_running_it() -> None:
    runtime = ScriptedRuntime([], block=True)
    agent = agent_with(runtime, slots=1)
    thread = threading.Thread(target=lambda: list(agent.run(a_spec("busy"))))
    thread.start()
    runtime.started.wait(5)
    assert [e["code"] for e in agent.run(a_spec("second"))] == ["host_busy"]
    agent.cancel_all("test over")
    thread.join(5)


def test_an_unknown_runtime_is_refused() -> None:
    events = list(agent_with(ScriptedRuntime([])).run(a_spec(runtime="container")))
    assert [e["code"] for e in events] == ["runtime_unavailable"]


def test_closing_the_stream_early_closes_the_runtime_and_frees_the_slot() -> None:
    agent = agent_with(ScriptedRuntime([{"type": "token", "content": str(i)} for i in range(10)]))
    stream = agent.run(a_spec())
    next(stream), next(stream)
    stream.close()
    assert agent.load().active_jobs == 0


def test_batched_run_carries_every_event_in_order_and_frees_the_slot() -> None:
    agent = agent_with(ScriptedRuntime([{"type": "token", "content": str(i)} for i in range(500)]
                                       + [{"type": "done"}]))
    batches = list(agent.run_batched(a_spec()))
    events = [e for batch in batches for e in batch]
    assert [e["seq"] for e in events] == list(range(502))
    assert events[-1]["type"] == "done" and all(batches)
    assert agent.load().active_jobs == 0


def test_closing_a_batched_run_early_cancels_the_job() -> None:
    runtime = ScriptedRuntime([{"type": "token", "content": "x"}], block=True)
    agent = agent_with(runtime)
    stream = agent.run_batched(a_spec("j2"))
    assert next(stream)[0]["type"] == "status"
    stream.close()
    assert agent.load().active_jobs == 0


def test_a_quiet_job_sends_empty_batches_so_the_coordinator_keeps_its_lease() -> None:
    runtime = ScriptedRuntime([{"type": "token", "content": "x"}], block=True)
    agent = agent_with(runtime)
    stream = agent.run_batched(a_spec("j3"), keepalive_s=0.05)
    assert next(stream)[0]["type"] == "status"
    assert [next(stream) for _ in range(3)][-1] == []  # the token, then keep-alives while it blocks
    agent.cancel(JobId("j3"))
    assert [e["code"] for batch in stream for e in batch] == ["cancelled"]
    assert agent.load().active_jobs == 0


# --- which workloads a host takes, given the model weights it holds ------------------------------------


def _models_catalog() -> dict[WorkloadSlug, Manifest]:
    chat = ModelSpec("chat-model", "gguf", "chat.gguf", "a" * 64)
    big = ModelSpec("big-model", "diffusers", "big", "b" * 64)
    entries = [Manifest(slug=WorkloadSlug(slug), name=slug, description="", runtime="container", trust_level=1,
                        price_micro=0, model=model)
               for slug, model in (("llm-chat", chat), ("sdxl", big), ("text-stats", None))]
    return {m.slug: m for m in entries}


def test_a_host_holding_every_model_keeps_its_accept_patterns() -> None:
    assert accepts_with_models((), _models_catalog(), lambda model: True) == ()
    assert accepts_with_models(("llm-*",), _models_catalog(), lambda model: True) == ("llm-*",)


def test_a_host_without_a_models_weights_never_accepts_its_workload() -> None:
    held = {"chat-model"}
    assert accepts_with_models((), _models_catalog(), lambda m: m.id in held) == ("llm-chat", "text-stats")
    assert accepts_with_models(("text-*",), _models_catalog(), lambda m: m.id in held) == ("text-stats",)
    assert accepts_with_models(("sdxl",), _models_catalog(), lambda m: m.id in held) == ("-none-",)
