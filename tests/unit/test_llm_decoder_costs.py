"""The batched decoder's choice between one step of N chats and N steps of one (workloads/llm-chat/decoder.py,
which the llm-chat image runs; here its _Costs alone, without a model)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

DECODER = Path(__file__).resolve().parents[2] / "workloads" / "llm-chat" / "decoder.py"


@pytest.fixture(scope="module")
def decoder() -> ModuleType:
    pytest.importorskip("llama_cpp")
    spec = importlib.util.spec_from_file_location("llm_chat_decoder", DECODER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    with pytest.MonkeyPatch.context() as env:  # what the module sets for its worker stays out of this process
        env.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        spec.loader.exec_module(module)
    return module


def test_chats_go_together_until_a_step_of_one_and_a_step_of_them_are_measured(decoder: ModuleType) -> None:
    costs = decoder._Costs()
    assert not costs.apart(1) and not costs.apart(4)  # nothing measured yet
    costs.took(1, 0.010)
    assert not costs.apart(4)  # a step of 4 not measured yet: it is taken to be measured
    costs.took(4, 0.030)
    assert costs.apart(4) is False  # 4 × 10 ms > 30 ms


def test_chats_go_apart_where_their_steps_of_one_cost_less_than_one_step_of_them(decoder: ModuleType) -> None:
    costs = decoder._Costs()
    costs.took(1, 0.0074)
    costs.took(2, 0.036)  # as measured on this project's 2-core EPYC
    costs.took(8, 0.049)
    assert costs.apart(2)
    assert not costs.apart(8)


def test_the_mode_not_taken_is_measured_again_now_and_then(decoder: ModuleType) -> None:
    costs = decoder._Costs()
    costs.took(1, 0.0074)
    costs.took(2, 0.036)
    choices = [costs.apart(2) for _ in range(decoder.EXPLORE_EVERY * 2)]
    assert choices.count(False) == 2 and choices[decoder.EXPLORE_EVERY - 1] is False


def test_a_busy_moment_moves_the_average_without_deciding_alone(decoder: ModuleType) -> None:
    costs = decoder._Costs()
    costs.took(1, 0.010)
    costs.took(2, 0.030)
    costs.took(1, 0.100)  # one slow step (another process took the core)
    assert costs.one == pytest.approx(0.010 + decoder.WEIGHT * 0.090)
    assert costs.apart(2) is False  # 2 × 28 ms > 30 ms: together, until the steps of one are quick again
    for _ in range(20):
        costs.took(1, 0.010)
    assert costs.apart(2)


def test_a_worker_with_one_thread_never_tries_more(decoder: ModuleType) -> None:
    threads = decoder._Threads(1)
    assert {threads.pick(n) for n in (1, 8) for _ in range(decoder.EXPLORE_EVERY * 2)} == {1}


def test_each_step_size_runs_on_the_thread_count_that_cost_less_for_it(decoder: ModuleType) -> None:
    threads = decoder._Threads(2)
    assert threads.pick(1) == 1  # each is measured first
    threads.took(1, 1, 0.0065)
    assert threads.pick(1) == 2
    threads.took(1, 2, 0.0090)  # a step of one: bound by memory, the second thread waits for a busy core
    assert threads.pick(8) == 1
    threads.took(8, 1, 0.034)
    threads.took(8, 2, 0.0187)  # a step of 8: bound by compute, two threads halve it (this project's EPYC)
    assert threads.pick(1) == 1 and threads.best(1) == 1
    assert threads.pick(8) == 2 and threads.best(8) == 2


def test_the_thread_count_not_taken_is_measured_again_now_and_then(decoder: ModuleType) -> None:
    threads = decoder._Threads(2)
    threads.took(1, 1, 0.0065)
    threads.took(1, 2, 0.0090)
    picks = [threads.pick(1) for _ in range(decoder.EXPLORE_EVERY * 2)]
    assert picks.count(2) == 2 and picks[decoder.EXPLORE_EVERY - 1] == 2
    assert threads.best(2) == 2  # a step size not measured yet: all the worker's threads
