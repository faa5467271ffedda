"""Host controls without Ray: the pause/resume/drain rules, the host agent turning jobs away while paused or outside
what its owner lends, and the join process's side (schedule with an injected clock, drain, leave's deadline)."""

from __future__ import annotations

import os
import threading
from datetime import datetime

import pytest
from test_docker_request import a_spec as a_container_spec
from test_docker_request import host_config
from test_host_agent import ScriptedRuntime, a_spec

from archipelag.actors.controls import (
    ONLINE,
    AgentView,
    Command,
    Controller,
    ControlState,
    HostControls,
    ShareLimits,
    declines,
    lent,
    next_state,
)
from archipelag.actors.hardware import Hardware
from archipelag.actors.host_agent import HostAgent
from archipelag.actors.schedule import parse_schedule
from archipelag.catalog import Manifest
from archipelag.errors import Conflict, InvalidTransition, ValidationFailed
from archipelag.ids import HostId, WorkloadSlug
from archipelag.lifecycle import HostStatus
from archipelag.runtimes.container_spec import HostFacts

PAUSE, RESUME, DRAIN, LEAVE = Command.PAUSE, Command.RESUME, Command.DRAIN, Command.LEAVE
OWNER = Controller.OWNER


class LocalAgent:
    """The agent's side as HostAgentActor wires it, minus Ray: placement is a list of what it was told."""

    def __init__(self, agent: HostAgent) -> None:
        self.agent = agent
        self.told: list[HostStatus] = []
        self.clock = 1000.0

    def control(self, command: Command, by: Controller, reason: str) -> AgentView:
        return self.agent.control(command, by, reason, self.clock, self.told.append)

    def view(self) -> AgentView:
        return self.agent.view()


class Clocks:
    def __init__(self, local: str = "12:00") -> None:
        self.now = 1000.0
        self.local = local

    def epoch(self) -> float:
        return self.now

    def local_now(self) -> datetime:
        hour, minute = map(int, self.local.split(":"))
        return datetime(2026, 12, 2, hour, minute)


def controls_for(agent: LocalAgent, clocks: Clocks, schedule: str | None = None,
                 drain_timeout_s: float = 60) -> HostControls:
    return HostControls(HostId("h1"), lambda: agent, {"coordinator": "10.0.0.1:6380"}, drain_timeout_s,
                        parse_schedule(schedule) if schedule else None, clocks.epoch, clocks.local_now)


def a_workload(slug: str = "w", ram_mb: int = 0, vram_mb: int = 0, gpu: bool = False) -> Manifest:
    return Manifest(slug=WorkloadSlug(slug), name=slug, description="", runtime="wasm", trust_level=0,
                    price_micro=0, required_ram_mb=ram_mb, required_vram_mb=vram_mb, requires_gpu=gpu)


# --- the rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "command", "end"), [
    (HostStatus.ONLINE, PAUSE, HostStatus.PAUSED),
    (HostStatus.PAUSED, PAUSE, HostStatus.PAUSED),
    (HostStatus.PAUSED, RESUME, HostStatus.ONLINE),
    (HostStatus.ONLINE, RESUME, HostStatus.ONLINE),
    (HostStatus.ONLINE, DRAIN, HostStatus.DRAINING),
    (HostStatus.PAUSED, DRAIN, HostStatus.DRAINING),
    (HostStatus.PAUSED, LEAVE, HostStatus.DRAINING),
    (HostStatus.DRAINING, DRAIN, HostStatus.DRAINING),
    (HostStatus.DRAINING, LEAVE, HostStatus.DRAINING),
])
def test_each_command_moves_a_host_where_its_owner_expects(start: HostStatus, command: Command,
                                                           end: HostStatus) -> None:
    assert next_state(ControlState(start, OWNER, "x"), command, OWNER, "", 5.0).status == end


@pytest.mark.parametrize("command", [PAUSE, RESUME])
def test_a_draining_host_cannot_be_paused_or_resumed_it_only_leaves(command: Command) -> None:
    with pytest.raises(Conflict, match="draining"):
        next_state(ControlState(HostStatus.DRAINING, OWNER, "draining"), command, OWNER, "", 5.0)


def test_a_pause_says_who_paused_and_keeps_when_it_began() -> None:
    paused = next_state(ONLINE, PAUSE, Controller.SCHEDULE, "outside its schedule", 5.0)
    assert (paused.by, paused.reason, paused.since) == (Controller.SCHEDULE, "outside its schedule", 5.0)
    again = next_state(paused, PAUSE, OWNER, "", 9.0)
    assert (again.by, again.reason, again.since) == (OWNER, "paused by its owner", 5.0)


@pytest.mark.parametrize(("workload", "why"), [
    (a_workload("llm-chat"), "accepts only wasm-*"),
    (a_workload("wasm-big", ram_mb=4096), "needs 4096 MB of RAM; its owner lends 2048 MB"),
    (a_workload("wasm-gpu", gpu=True), "needs a GPU; its owner lends none"),
    (a_workload("wasm-vram", vram_mb=1024), "needs 1024 MB of GPU memory"),
])
def test_a_job_outside_what_the_owner_lends_is_declined_with_why(workload: Manifest, why: str) -> None:
    share = ShareLimits(ram_mb=2048, vram_mb=0, gpu=False, accepts=("wasm-*",))
    assert why in (declines(share, workload) or "")
    assert declines(share, a_workload("wasm-hash", ram_mb=64)) is None


def test_no_gpu_and_a_gpu_memory_cap_only_ever_lower_what_is_lent() -> None:
    machine = Hardware(cpu_cores=8, ram_mb=32000, gpu_model="RTX 4090", gpu_vram_mb=24564)
    assert lent(machine, no_gpu=True).gpu_model is None and lent(machine, no_gpu=True).gpu_vram_mb == 0
    assert lent(machine, max_gpu_memory_mb=8000).gpu_vram_mb == 8000
    assert lent(machine, max_gpu_memory_mb=99999).gpu_vram_mb == 24564
    assert lent(machine, max_gpu_memory_mb=0).gpu_model is None
    assert lent(machine) == machine


# --- the agent ----------------------------------------------------------------------------------------


def test_a_paused_host_turns_new_jobs_away_and_takes_them_again_once_resumed() -> None:
    agent = LocalAgent(HostAgent(HostId("h1"), {"wasm": ScriptedRuntime([{"type": "done"}])}, 2))
    agent.control(PAUSE, OWNER, "")
    refused = list(agent.agent.run(a_spec("j1")))
    assert [(e["type"], e["code"]) for e in refused] == [("error", "host_busy")]  # the next host, same attempt
    assert "paused by its owner" in refused[0]["message"]
    agent.control(RESUME, OWNER, "")
    assert list(agent.agent.run(a_spec("j2")))[-1]["type"] == "done"
    assert agent.told == [HostStatus.PAUSED, HostStatus.ONLINE]


def test_a_job_running_when_its_host_is_paused_runs_to_its_end() -> None:
    runtime = ScriptedRuntime([{"type": "token", "content": "a"}], block=True)
    agent = LocalAgent(HostAgent(HostId("h1"), {"wasm": runtime}, 2))
    events = agent.agent.run(a_spec("j1"))
    assert next(events)["type"] == "status" and next(events)["type"] == "token"
    agent.control(PAUSE, OWNER, "")
    assert agent.view().running == ("j1",)
    agent.agent.cancel(a_spec("j1").job_id, "done")
    assert list(events)[-1]["type"] == "error" and agent.view().running == ()


def test_a_change_placement_refuses_changes_nothing_on_the_host() -> None:
    agent = HostAgent(HostId("h1"), {}, 2)

    def suspended(status: HostStatus) -> None:
        raise InvalidTransition("host h1 is suspended", host_id="h1", current="suspended", target=str(status))

    with pytest.raises(InvalidTransition):
        agent.control(PAUSE, OWNER, "", 1.0, suspended)
    assert agent.state == ONLINE


def test_a_heartbeat_restating_the_status_never_overtakes_a_resume_being_told() -> None:
    """Seen in CI: a heartbeat read "paused" while a resume was being told to placement and sent it after the
    resume's "online"; placement kept the host paused for good (heartbeats restate only a status that is not
    online)."""
    agent = HostAgent(HostId("h1"), {}, 2)
    told: list[HostStatus] = []
    agent.control(PAUSE, OWNER, "", 1.0, told.append)
    telling, answer = threading.Event(), threading.Event()

    def slow_placement(status: HostStatus) -> None:
        telling.set()
        answer.wait(5)
        told.append(status)

    resume = threading.Thread(target=agent.control, args=(RESUME, OWNER, "", 2.0, slow_placement))
    resume.start()
    assert telling.wait(5)
    beat = threading.Thread(target=agent.restate, args=(told.append,))
    beat.start()
    beat.join(0.3)  # the heartbeat waits for the resume being told …
    answer.set()
    resume.join(5)
    beat.join(5)
    assert told == [HostStatus.PAUSED, HostStatus.ONLINE]  # … and then has nothing to restate
    assert agent.state.status == HostStatus.ONLINE


def test_the_agent_declines_a_job_its_owner_does_not_lend_for_whatever_placement_decided() -> None:
    share = ShareLimits(ram_mb=512, vram_mb=0, gpu=False, accepts=())
    agent = HostAgent(HostId("h1"), {"wasm": ScriptedRuntime([{"type": "done"}])}, 2, share=share)
    spec = a_spec("j1")
    big = type(spec)(spec.job_id, a_workload("w", ram_mb=1024), spec.input, spec.limits)
    [event] = list(agent.run(big))
    assert event["code"] == "host_busy" and "declines the job" in event["message"] and "1024 MB" in event["message"]
    assert list(agent.run(spec))[-1]["type"] == "done"


# --- the join process's side --------------------------------------------------------------------------


def test_outside_its_schedule_a_host_is_paused_and_says_why_then_resumed_inside() -> None:
    agent, clocks = LocalAgent(HostAgent(HostId("h1"), {}, 2)), Clocks("12:00")
    controls = controls_for(agent, clocks, "22:00-07:00")
    assert controls.tick() is False
    status = controls.status()
    assert status["status"] == "paused" and status["by"] == "schedule" and status["schedule_open"] is False
    assert "outside its schedule (22:00-07:00)" in status["reason"] and "22:00" in status["reason"]
    clocks.local = "22:00"
    controls.tick()
    assert controls.status()["status"] == "online" and controls.status()["schedule_open"] is True
    assert agent.told == [HostStatus.PAUSED, HostStatus.ONLINE]


def test_the_schedule_does_not_resume_a_host_its_owner_paused() -> None:
    agent, clocks = LocalAgent(HostAgent(HostId("h1"), {}, 2)), Clocks("12:00")
    controls = controls_for(agent, clocks, "22:00-07:00")
    controls.tick()
    controls.handle({"command": "pause"})  # the owner's pause replaces the schedule's
    clocks.local = "23:00"
    controls.tick()
    assert controls.status()["status"] == "paused" and controls.status()["by"] == "owner"


def test_a_resume_outside_the_schedule_is_refused_and_says_when_it_opens() -> None:
    agent, clocks = LocalAgent(HostAgent(HostId("h1"), {}, 2)), Clocks("08:30")
    controls = controls_for(agent, clocks, "22:00-07:00")
    controls.tick()
    with pytest.raises(Conflict, match="takes work again at 22:00"):
        controls.handle({"command": "resume"})


def test_a_drain_leaves_once_the_running_job_has_finished() -> None:
    runtime = ScriptedRuntime([{"type": "token", "content": "a"}], block=True)
    agent, clocks = LocalAgent(HostAgent(HostId("h1"), {"wasm": runtime}, 2)), Clocks()
    controls = controls_for(agent, clocks)
    events = agent.agent.run(a_spec("j1"))
    next(events)
    answer = controls.handle({"command": "drain"})
    assert answer["status"] == "draining" and answer["running_jobs"] == ["j1"] and answer["leaves_by"] is None
    clocks.now += 10_000  # a drain has no deadline
    assert controls.tick() is False
    assert next(agent.agent.run(a_spec("j2")))["code"] == "host_busy"
    finishing = threading.Thread(target=lambda: list(events))
    finishing.start()
    agent.agent.cancel(a_spec("j1").job_id, "finished")
    finishing.join(5)
    assert controls.tick() is True


def test_a_leave_waits_for_running_jobs_until_its_deadline_then_goes() -> None:
    runtime = ScriptedRuntime([], block=True)
    agent, clocks = LocalAgent(HostAgent(HostId("h1"), {"wasm": runtime}, 2)), Clocks()
    controls = controls_for(agent, clocks, drain_timeout_s=60)
    events = agent.agent.run(a_spec("j1"))
    next(events)
    controls.leave(60)  # Ctrl-C
    assert controls.tick() is False
    clocks.now += 59
    assert controls.tick() is False
    clocks.now += 1
    assert controls.tick() is True
    agent.agent.cancel(a_spec("j1").job_id, "left")
    list(events)


def test_leave_with_a_timeout_of_zero_goes_at_once_and_an_idle_host_goes_at_the_next_tick() -> None:
    agent, clocks = LocalAgent(HostAgent(HostId("h1"), {"wasm": ScriptedRuntime([], block=True)}, 2)), Clocks()
    controls = controls_for(agent, clocks)
    events = agent.agent.run(a_spec("j1"))
    next(events)
    controls.handle({"command": "leave", "timeout_s": 0})
    assert controls.tick() is True
    agent.agent.cancel(a_spec("j1").job_id, "left")
    list(events)
    idle = controls_for(LocalAgent(HostAgent(HostId("h2"), {}, 2)), Clocks())
    idle.handle({"command": "leave"})
    assert idle.tick() is True


def test_a_rejoined_host_gets_back_the_state_its_old_agent_had() -> None:
    first, clocks = LocalAgent(HostAgent(HostId("h1"), {}, 2)), Clocks()
    current = [first]
    controls = HostControls(HostId("h1"), lambda: current[0], {}, 60, None, clocks.epoch, clocks.local_now)
    controls.handle({"command": "pause"})
    current[0] = LocalAgent(HostAgent(HostId("h1"), {}, 2))  # the node died; a new agent, online
    controls.restore()
    assert current[0].agent.state.status == HostStatus.PAUSED and current[0].agent.state.by == OWNER


@pytest.mark.parametrize("request_", [
    {}, {"command": "reboot"}, {"command": "pause", "extra": 1}, {"command": "pause", "timeout_s": 5},
    {"command": "leave", "timeout_s": -1}, {"command": "leave", "timeout_s": "soon"},
    {"command": "leave", "timeout_s": True}, {"command": "leave", "timeout_s": 10**9},
])
def test_a_bad_control_request_is_refused_with_what_is_wrong(request_: dict[str, object]) -> None:
    controls = controls_for(LocalAgent(HostAgent(HostId("h1"), {}, 2)), Clocks())
    with pytest.raises(ValidationFailed):
        controls.handle(request_)
    assert controls.status()["status"] == "online"


def test_status_says_where_the_host_stands() -> None:
    controls = controls_for(LocalAgent(HostAgent(HostId("h1"), {}, 2)), Clocks(), "22:00-07:00")
    status = controls.handle({"command": "status"})
    assert status["host_id"] == "h1" and status["coordinator"] == "10.0.0.1:6380"
    assert status["schedule"] == "22:00-07:00" and status["running_jobs"] == []


def test_a_job_stopped_because_its_host_leaves_ends_without_a_final_event_so_it_runs_elsewhere() -> None:
    agent = HostAgent(HostId("h1"), {"wasm": ScriptedRuntime([{"type": "token", "content": "a"}], block=True)}, 2)
    events = agent.run(a_spec("j1"))
    assert next(events)["type"] == "status" and next(events)["type"] == "token"
    agent.close()
    assert list(events) == []  # no `cancelled` for its user: the coordinator runs it again on another host
    assert agent.view().running == ()


def test_a_schedule_placement_refuses_does_not_stop_the_host() -> None:
    agent, clocks = HostAgent(HostId("h1"), {}, 2), Clocks("12:00")

    class Suspended(LocalAgent):
        def control(self, command: Command, by: Controller, reason: str) -> AgentView:
            def refuse(status: HostStatus) -> None:
                raise InvalidTransition("host h1 is suspended", host_id="h1", current="suspended", target=str(status))
            return self.agent.control(command, by, reason, self.clock, refuse)

    controls = controls_for(Suspended(agent), clocks, "22:00-07:00")
    assert controls.tick() is False and controls.tick() is False  # it stays joined; it says why once
    assert controls.status()["status"] == "online"


def test_a_container_s_cpu_quota_never_goes_past_the_cores_its_owner_lends() -> None:
    one = HostFacts.detect(lent_cores=1)
    assert one.cpu_count == 1
    spec = a_container_spec(trust_level=3)
    assert host_config(spec, one)["nano_cpus"] <= 1_000_000_000
    assert HostFacts.detect().cpu_count == (os.cpu_count() or 1)
