"""``envs.parity``'s references made by stepping an env, and the env's ``cuda_graph`` switch.

The rule itself is tested against HumanoidBench's recordings in test_envs_step.py; here: a recording replayed
on the same device reproduces itself, the rule rejects a wrong step on such a reference, MuJoCo's C library
agrees with the Warp step within the gap (and a wrong control mapping does not), and ``cuda_graph=False``
runs the physics launches directly where a CUDA env would replay its captured graph.
"""
import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from ezm_gpu.envs import base as base_module
from ezm_gpu.envs import make, parity
from ezm_gpu.envs.base import STEP_INFO
from hb_fixtures import ASSETS, requires_shared

pytestmark = requires_shared


@pytest.fixture(scope="module")
def walk():
    """(h1-walk recording of 4 worlds x 3 steps on the CPU, the env it was made with)."""
    env = make("h1-walk", 4, device="cpu", root=ASSETS)
    return parity.record(env, steps=3), env


def test_a_recording_holds_every_pre_step_state_and_the_reference(walk):
    recording, env = walk
    rows, nq, nv = 12, env.mj_model.nq, env.mj_model.nv
    assert recording.rows == rows and recording.task == "h1-walk"
    assert tuple(recording.qpos.shape) == (rows, nq) and tuple(recording.warmstart.shape) == (rows, nv)
    assert tuple(recording.action.shape) == (rows, 19) and recording.action.abs().max() <= 1
    reference = recording.reference
    assert reference.qvel.shape == (rows, nv) and reference.head_z.shape == (rows,)
    assert set(reference.terms) >= {"reward", "standing", "upright", "move"} and reference.terminated.shape == (rows,)
    assert all(change.shape == (4 * 2,) for change in reference.term_change.values())  # E x (T - 1)
    assert (reference.qvel_step > 0).all()  # every step moves the velocities
    # Row e*T + t: world e's state before its step t; its post-step qvel is the next row's pre-step qvel.
    np.testing.assert_allclose(reference.qvel[0], recording.qvel[1].numpy(), rtol=0, atol=0)


def test_reward_terms_are_the_info_entries_besides_the_step_info(walk):
    _, env = walk
    env.reset()
    info = env.step(torch.zeros(4, 19), readouts=True)[4]
    terms = env.reward_terms(info)
    assert set(terms) | STEP_INFO | set(env.readout_names) == set(info)
    assert terms and all(tuple(value.shape) == (4,) for value in terms.values())


def test_replay_on_the_same_device_reproduces_the_recording_tiled_over_more_worlds(walk):
    recording, _ = walk
    rows = np.arange(30) % recording.rows  # every state on 2-3 worlds
    env = make("h1-walk", 30, device="cpu", root=ASSETS)
    step = parity.replay(env, recording, rows)
    reference = recording.reference.take(rows)
    assert parity.parity_violations(reference, **step) == []
    assert parity.qvel_gap_fraction(reference, step["qvel"]) < 1e-6  # the same float32 kernels
    np.testing.assert_allclose(step["head_z"].numpy(), reference.head_z, rtol=0, atol=1e-6)


def test_the_rule_rejects_a_wrong_action_mapping_on_such_a_reference(walk):
    recording, _ = walk
    wrong = dataclasses.replace(recording, action=(recording.action * 0.8).clamp(-1, 1))
    step = parity.replay(make("h1-walk", recording.rows, device="cpu", root=ASSETS), wrong)
    violations = parity.parity_violations(recording.reference, **step)
    assert any(v.startswith("qvel |diff| median") for v in violations), violations


def test_mujoco_c_agrees_with_the_warp_step_and_a_wrong_control_does_not(walk):
    recording, env = walk
    c_step = parity.mujoco_step(env.mj_model, recording, env.frame_skip)
    assert parity.parity_violations(recording.reference, **c_step) == []
    assert parity.qvel_gap_fraction(recording.reference, c_step["qvel"]) < 1e-3  # float32 vs float64: ~1e-6
    wrong = parity.mujoco_step(env.mj_model, dataclasses.replace(recording, ctrl=recording.ctrl * 0.8), env.frame_skip)
    assert parity.parity_violations(recording.reference, **wrong)


def test_spec_fractions_follow_from_the_spec_gap():
    fractions = parity.spec_fractions(np.array([10.0, 8.0, 12.0]), np.linspace(0.0, 1.0, 101))
    assert fractions.state == pytest.approx(0.08 / 10.0)
    assert fractions.p90 == pytest.approx(1.2e-4 / 0.9) and fractions.p99 == pytest.approx(2.1e-3 / 0.99)


class _Recorder:
    """Stands in for ``capture.capture_graph``: records the capture and replays the recorded function."""

    def __init__(self):
        self.captures, self.launches = 0, 0

    def __call__(self, device, record):
        self.captures += 1
        recorder = self

        class Graph:
            def launch(self):
                recorder.launches += 1
                record()

        return Graph()


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_cuda_graph_switch_captures_once_or_launches_directly(monkeypatch, cuda_graph):
    """On a (stand-in) CUDA device the physics is captured once and replayed, or with cuda_graph=False launched
    directly every step, never captured."""
    env = make("h1-walk", 2, device="cpu", root=ASSETS, cuda_graph=cuda_graph)
    assert env.cuda_graph is cuda_graph
    recorder, direct = _Recorder(), []
    monkeypatch.setattr(base_module, "capture_graph", recorder)
    monkeypatch.setattr(env, "_warp_scope", contextlib.nullcontext)
    monkeypatch.setattr(env, "_record_physics", lambda: direct.append(1))
    env.device = torch.device("cuda", 0)  # only _physics reads it here
    for _ in range(3):
        env._physics()
    assert (recorder.captures, recorder.launches, len(direct)) == ((1, 3, 3) if cuda_graph else (0, 0, 3))


def test_cuda_graph_off_changes_nothing_on_the_cpu():
    a = make("h1-walk", 3, device="cpu", root=ASSETS, seed=1)
    b = make("h1-walk", 3, device="cpu", root=ASSETS, seed=1, cuda_graph=False)
    a.reset(), b.reset()
    action = torch.rand(3, 19, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(a.step(action)[0], b.step(action)[0])
