"""The step-parity rule: when one env step agrees with a reference step "within the physics gap".

One env step is physics: against another implementation (HumanoidBench's recordings from MuJoCo 3.1.6,
MuJoCo's C library in float64, the same env on another device) it cannot match bit for bit, so it is
compared as a distribution with the measured MuJoCo version gap (``docs/envs.md#the-step-parity-rule``).
The rule lives here so that the parity tests (``tests/test_envs_step.py``: the env against HumanoidBench's
recordings) and ``python -m ezm_gpu.selfcheck`` (a device's step against the CPU's, or the CPU's against
MuJoCo C) apply the same bounds:

  - ``StepReference``: what a reference step did from W pre-step states that lie on E trajectories of
    T steps (W = E x T, episode-major), with the one-step changes along them that scale every bound;
  - ``parity_violations``: every way a step departs from the reference by more than the gap allows;
  - ``near_termination``: the reference states within one step of a termination threshold;
  - ``record`` / ``Recording``: a reference made by stepping an env (on the CPU) with random actions,
    every pre-step state kept; ``replay``: one step of another env from those states;
    ``mujoco_step``: the same steps in MuJoCo's C library.

Arrays: numpy float64 on the host (tensors are accepted and copied there); qvel in the model's units
(rad/s, m/s), heights in metres, rewards and terms in task units.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import mujoco
import numpy as np
import torch

from . import rewards
from .scene import geom_names

__all__ = ["SPEC_GAP", "MARGIN", "FLOAT32_FLOOR", "GapFractions", "SPEC_FRACTIONS", "spec_fractions", "step_change",
           "qvel_change", "changes_within_a_step", "StepReference", "near_termination", "qvel_gap_fraction",
           "parity_violations", "Recording", "record", "replay", "mujoco_step"]

# The documented MuJoCo 3.1.6 -> 4 gap (``docs/envs.md#the-mujoco-version-gap``: h1-walk, all 400 recorded steps,
# MuJoCo 4.0 C, which MuJoCo-Warp on CPU agrees with): per world, max |qvel diff| median 0.08; head height |diff|
# median 1e-5, max 5e-3; reward |diff| p90 1.2e-4, p99 2.1e-3.
SPEC_GAP = {"qvel_median": 0.08, "head_median": 1e-5, "head_max": 5e-3, "reward_p90": 1.2e-4, "reward_p99": 2.1e-3}
# One margin for every task and robot: the spec's figures come from one task of one robot, and the
# gap depends on how many contacts a scene has (hands, boards, walls); a wrong model, action mapping or
# readout shows as a gap of the order of a whole step's motion (ratio ~1, see the perturbed-action test),
# two orders of magnitude above the version gap (~0.01), so one order of margin still separates them.
MARGIN = 10.0
# float32 round-off of a term near 1 (the env computes in float32; a recording is float64).
FLOAT32_FLOOR = 1e-6
RELATIVE_TERMS = ("motion_penalty",)  # sums of qvel² (up to ~1e4): compared relative to their size
DISCOUNT_CROSSED = 0.45  # a contact discount (1 or 0.1) that differs by more than this crossed its threshold
DISCOUNT_PENALISED = 0.55  # a recorded discount below this is the penalised 0.1


@dataclasses.dataclass(frozen=True)
class GapFractions:
    """The spec's gap as a fraction of what one step changes on the recording it was measured on."""

    state: float  # qvel gap median / median one-step max |Δqvel|
    p90: float  # reward gap p90 / p90 of the one-step reward change
    p99: float  # reward gap p99 / p99 of the one-step reward change


def step_change(x) -> np.ndarray:
    """|x_t - x_{t-1}| over the steps t >= 1 of every trajectory, flattened ([E, T, ...] -> [E*(T-1)*...])."""
    return np.abs(np.diff(np.asarray(x), axis=1)).reshape(-1)


def qvel_change(qvel_pre, qvel_post) -> np.ndarray:
    """Per step, max |qvel_post - qvel_pre| over the dofs: how far one step moves the velocities
    ([E, T, nv] each -> [E*T])."""
    return np.abs(np.asarray(qvel_post) - np.asarray(qvel_pre)).max(-1).reshape(-1)


def spec_fractions(qvel_steps: np.ndarray, reward_steps: np.ndarray) -> GapFractions:
    """``SPEC_GAP`` as fractions of the one-step changes of the recording it was measured on: qvel_steps
    [N] (``qvel_change``) and reward_steps [N'] (``step_change`` of the rewards)."""
    return GapFractions(state=SPEC_GAP["qvel_median"] / np.median(qvel_steps),
                        p90=SPEC_GAP["reward_p90"] / np.percentile(reward_steps, 90),
                        p99=SPEC_GAP["reward_p99"] / np.percentile(reward_steps, 99))


# ``spec_fractions`` of HumanoidBench's h1-walk recording (../shared/fixtures/humanoidbench, where the gap was
# measured), kept here so code without the recordings applies the same rule; tests/test_envs_step.py checks it.
SPEC_FRACTIONS = GapFractions(state=0.008416187743081689, p90=0.009949117151692374, p99=0.033426382802993114)


def changes_within_a_step(flag) -> np.ndarray:
    """[E, T] indicator -> [E*T] bool: it changes between t-1 and t or between t and t+1."""
    flag = np.asarray(flag)
    near = np.zeros(flag.shape, bool)
    change = flag[:, 1:] != flag[:, :-1]
    near[:, 1:] |= change
    near[:, :-1] |= change
    return near.reshape(-1)


def _host(x) -> np.ndarray:
    """A tensor or array as a float64 (or bool) numpy array on the host."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy() if x.dtype == torch.bool else x.double().numpy()
    x = np.asarray(x)
    return x if x.dtype == bool else x.astype(np.float64, copy=False)


def _term_change(name: str, recorded: np.ndarray) -> np.ndarray:
    change = step_change(recorded)
    if name in RELATIVE_TERMS:
        change = change / (1 + np.abs(recorded[:, 1:].reshape(-1)))
    return change


@dataclasses.dataclass(frozen=True)
class StepReference:
    """One reference step from each of W pre-step states (world w), and the one-step changes along the E
    trajectories of T steps the states came from, which scale the bounds of ``parity_violations``."""

    qvel: np.ndarray  # [W, nv] after the step
    qvel_step: np.ndarray  # [W] max |Δqvel| of each world's step (``qvel_change``)
    head_z: np.ndarray  # [W] the head height the step's rewards read (m)
    terms: dict  # name -> [W]: "reward" and every reward term (empty: rewards not compared)
    term_change: dict  # name -> [E*(T-1)] one-step changes along the trajectories (RELATIVE_TERMS relative)
    near_contact: np.ndarray  # [W] bool: a penalised contact (0.1 discount) made or broken within a step
    terminated: Optional[np.ndarray] = None  # [W] bool (None: terminations not compared)
    near_termination: Optional[np.ndarray] = None  # [W] bool: within a step of a termination threshold

    @classmethod
    def from_trajectories(cls, qvel_pre, qvel_post, head_z, terms: Mapping[str, np.ndarray],
                          terminated=None, near_termination=None) -> "StepReference":
        """From per-step arrays of E trajectories x T steps: qvel_pre/post [E, T, nv], head_z [E, T],
        terms {name: [E, T]} (T >= 2: the changes are between steps), terminated [E, T] bool,
        near_termination [E*T] bool (``near_termination``)."""
        head_z = _host(head_z)
        episodes, steps = head_z.shape
        if steps < 2 and terms:
            raise ValueError(f"a reference needs at least 2 steps per trajectory to scale its terms, got {steps}")
        worlds = episodes * steps
        terms = {name: _host(values) for name, values in terms.items()}
        near_contact = np.zeros(worlds, bool)
        for name, values in terms.items():
            if "discount" in name:  # 1, or 0.1 while a penalised contact lasts
                near_contact |= changes_within_a_step(values < DISCOUNT_PENALISED)
        qvel_post = _host(qvel_post)
        return cls(qvel=qvel_post.reshape(worlds, -1), qvel_step=qvel_change(_host(qvel_pre), qvel_post),
                   head_z=head_z.reshape(worlds), terms={name: v.reshape(worlds) for name, v in terms.items()},
                   term_change={name: _term_change(name, v) for name, v in terms.items()}, near_contact=near_contact,
                   terminated=None if terminated is None else _host(terminated).reshape(worlds),
                   near_termination=None if near_termination is None else _host(near_termination).reshape(worlds))

    def take(self, rows) -> "StepReference":
        """The reference of an env whose world i holds state ``rows[i]`` (rows [W'] int: tiling the states over
        more worlds); the trajectories' changes stay as they are."""
        rows = np.asarray(rows)

        def pick(x):
            return None if x is None else x[rows]

        return dataclasses.replace(self, qvel=self.qvel[rows], qvel_step=self.qvel_step[rows],
                                   head_z=self.head_z[rows], terms={k: v[rows] for k, v in self.terms.items()},
                                   near_contact=self.near_contact[rows], terminated=pick(self.terminated),
                                   near_termination=pick(self.near_termination))


def near_termination(task: str, terminated, inputs: rewards.RewardInputs, root_height_pre, geom_names_,
                     task_state: Optional[dict] = None) -> np.ndarray:
    """[E*T] bool: reference states one step or less from a termination threshold: the flag changes within a
    step, or moving the root height and torso upright (the thresholded quantities) by their own one-step
    change flips the task's termination (``rewards.compute`` in float64 on the reference's inputs).

    terminated [E, T] bool; inputs: the reference's ``RewardInputs`` after each step, [E*T] rows
    (episode-major); root_height_pre [E*T] qpos[2] before the step; geom_names_: the scene's geom names in id
    order; task_state: the task state before each step ({name: [E*T, ...]}, maze stage, reach goal).
    """
    terminated = _host(terminated)
    episodes, steps = terminated.shape
    near = changes_within_a_step(terminated)
    inputs = dataclasses.replace(inputs, **{f.name: getattr(inputs, f.name).double()
                                           for f in dataclasses.fields(inputs)
                                           if isinstance(getattr(inputs, f.name), torch.Tensor)
                                           and getattr(inputs, f.name).is_floating_point()})
    consts = rewards.task_constants(task, geom_names_, dtype=torch.float64)
    root_change = (inputs.qpos[:, 2] - torch.as_tensor(_host(root_height_pre))).abs()
    upright = inputs.torso_upright.reshape(episodes, steps)
    upright_change = torch.cat([torch.zeros_like(upright[:, :1]), (upright[:, 1:] - upright[:, :-1]).abs()], 1)
    state = {k: v.double() if v.is_floating_point() else v for k, v in (task_state or {}).items()}
    for sign in (-1.0, 1.0):
        qpos = inputs.qpos.clone()
        qpos[:, 2] += sign * root_change
        moved = dataclasses.replace(inputs, qpos=qpos,
                                    torso_upright=inputs.torso_upright + sign * upright_change.reshape(-1))
        near |= rewards.compute(task, moved, consts, state)[1].cpu().numpy() != terminated.reshape(-1)
    return near


def qvel_gap_fraction(reference: StepReference, qvel) -> float:
    """Median over worlds of max |qvel - reference qvel|, as a fraction of the reference's median one-step
    max |Δqvel| (the rule's state measure; the spec's gap is ``SPEC_FRACTIONS.state`` ~ 0.008)."""
    gap = np.median(np.abs(_host(qvel) - reference.qvel).max(1))
    return float(gap / np.median(reference.qvel_step))


def parity_violations(reference: StepReference, qvel, head_z, terms: Optional[Mapping] = None, terminated=None,
                      fractions: GapFractions = SPEC_FRACTIONS) -> list[str]:
    """Every way one step from the reference's states departs from it by more than the version gap allows
    (empty = parity). One rule for all tasks, each bound MARGIN x the spec's gap:

    - state: max |qvel diff| median <= MARGIN x spec fraction x the reference's median one-step qvel change;
      head height |diff| median/max <= MARGIN x the spec's, scaled by the task's state gap over the spec's
      (scenes with more contacts part further, and the reward follows the state);
    - reward and every term (when ``terms`` is given), on steps without a threshold crossing: p90 and p99 of
      |diff| <= MARGIN x the spec's reward fraction x the term's own one-step change at that quantile (x the
      same state scale); max <= the largest one-step change the reference trajectories make;
    - threshold crossings (terminated flips, when ``terminated`` is given; penalised contacts that differ: the
      0.1 discounts) at most one per reference state near that threshold.

    Args: the step's qvel [W, nv], head_z [W], terms {name: [W]} (every name of ``reference.terms``),
    terminated [W] bool; fractions: the spec's gap relative to a step (``SPEC_FRACTIONS``).
    """
    bad = []
    qvel_fraction = qvel_gap_fraction(reference, qvel)
    if qvel_fraction > MARGIN * fractions.state:
        gap = qvel_fraction * np.median(reference.qvel_step)
        bad.append(f"qvel |diff| median {gap:.3f} is {qvel_fraction:.3f} of a step's change "
                   f"(bound {MARGIN * fractions.state:.3f})")
    scale = max(1.0, qvel_fraction / fractions.state)
    head = np.abs(_host(head_z) - reference.head_z)
    for name, value in (("median", np.median(head)), ("max", head.max())):
        if value > MARGIN * scale * SPEC_GAP[f"head_{name}"]:
            bad.append(f"head height |diff| {name} {value:.1e} > {MARGIN * scale * SPEC_GAP[f'head_{name}']:.1e}")
    same_termination = np.ones(reference.head_z.shape, bool)
    if terminated is not None and reference.terminated is not None:
        same_termination = _host(terminated) == reference.terminated
        flips, near = int((~same_termination).sum()), int(reference.near_termination.sum())
        if flips > near:
            bad.append(f"{flips} terminated flips, {near} recorded states near a termination threshold")
    if terms is None:
        return bad
    ours = {name: _host(terms[name]) for name in reference.terms}
    crossed = np.zeros(reference.head_z.shape, bool)
    for name in reference.terms:
        if "discount" in name:
            crossed |= np.abs(ours[name] - reference.terms[name]) > DISCOUNT_CROSSED
    if crossed.sum() > reference.near_contact.sum():
        bad.append(f"{crossed.sum()} penalised-contact crossings, {reference.near_contact.sum()} recorded states "
                   "near one")
    smooth = ~crossed & same_termination
    if not smooth.any():
        return bad
    for name, recorded in reference.terms.items():
        diff = np.abs(ours[name] - recorded)[smooth]
        change = reference.term_change[name]
        if name in RELATIVE_TERMS:
            diff = diff / (1 + np.abs(recorded[smooth]))
        for q in (90, 99):
            bound = MARGIN * scale * getattr(fractions, f"p{q}") * np.percentile(change, q) + FLOAT32_FLOOR
            if np.percentile(diff, q) > bound:
                bad.append(f"{name} |diff| p{q} {np.percentile(diff, q):.1e} > {bound:.1e}")
        if diff.max() > change.max() + FLOAT32_FLOOR:
            bad.append(f"{name} |diff| max {diff.max():.1e} > the largest recorded step change {change.max():.1e}")
    return bad


# --- a reference made by stepping an env --------------------------------------------------------------------

@dataclasses.dataclass
class Recording:
    """E worlds of one task stepped T times (after a warm-up) with uniform random actions: every pre-step state
    as a row (W = E x T rows, row e*T + t), on the host, and the ``StepReference`` of what the steps did."""

    task: str
    qpos: torch.Tensor  # [W, nq] before the step
    qvel: torch.Tensor  # [W, nv] before the step
    warmstart: torch.Tensor  # [W, nv] qacc_warmstart before the step
    state: dict  # the task state before the step: name -> [W, ...]
    action: torch.Tensor  # [W, nu] in [-1, 1]
    ctrl: torch.Tensor  # [W, nu] the controls the step applied
    reference: StepReference

    @property
    def rows(self) -> int:
        return self.qpos.shape[0]


def _stack_steps(per_step: list) -> torch.Tensor:
    """T tensors [E, ...] -> [E*T, ...] in row order e*T + t, on the host."""
    stacked = torch.stack([x.cpu() for x in per_step], dim=1)
    return stacked.reshape(-1, *stacked.shape[2:])


def record(env, steps: int, warmup: int = 2, seed: int = 0) -> Recording:
    """Resets ``env`` (E = ``env.num_envs`` worlds of a HumanoidBench task, a trusted device: the CPU), takes
    ``warmup`` steps, then ``steps`` recorded ones (T >= 2), all with seeded uniform random actions; terminations
    count (``ignore_termination`` as made), and a world that ends resets inside the step as usual."""
    if steps < 2:
        raise ValueError(f"record needs steps >= 2 (the rule scales by changes between steps), got {steps}")
    generator = torch.Generator().manual_seed(seed)
    nq, nv = env.mj_model.nq, env.mj_model.nv

    def random_action():
        return (torch.rand(env.num_envs, env.action_dim, generator=generator) * 2 - 1).to(env.device)

    env.reset()
    for _ in range(warmup):
        env.step(random_action())
    keep = {name: [] for name in ("qpos", "qvel", "warmstart", "action", "ctrl", "qvel_post", "terminated")}
    states, terms, inputs = [], {}, []
    for _ in range(steps):
        pre = env.state_dict()
        states.append({k: v.clone() for k, v in env.state.items()})
        action = random_action()
        _, reward, terminated, _, info = env.step(action, readouts=True)
        for name, value in (("qpos", pre["qpos"]), ("qvel", pre["qvel"]), ("warmstart", pre["warmstart"]),
                            ("action", action), ("ctrl", info["ctrl"]), ("terminated", terminated),
                            ("qvel_post", info["final_observation"][:, nq:nq + nv])):
            keep[name].append(value)
        for name, value in {"reward": reward, **env.reward_terms(info)}.items():
            terms.setdefault(name, []).append(value)
        inputs.append(info["reward_inputs"])
    rows = {name: _stack_steps(values) for name, values in keep.items()}
    state = {k: _stack_steps([s[k] for s in states]) for k in states[0]}
    readout = rewards.RewardInputs(**{name: None if inputs[0][name] is None else
                                      _stack_steps([i[name] for i in inputs]) for name in inputs[0]})
    shape = (env.num_envs, steps)
    near = near_termination(str(env.task), rows["terminated"].view(shape), readout, rows["qpos"][:, 2],
                            geom_names(env.mj_model), state)
    reference = StepReference.from_trajectories(
        rows["qvel"].view(*shape, nv), rows["qvel_post"].view(*shape, nv), readout.head_z.view(shape),
        {name: _stack_steps(values).view(shape) for name, values in terms.items()}, rows["terminated"].view(shape),
        near)
    return Recording(task=str(env.task), qpos=rows["qpos"], qvel=rows["qvel"], warmstart=rows["warmstart"],
                     state=state, action=rows["action"], ctrl=rows["ctrl"], reference=reference)


def replay(env, recording: Recording, rows=None) -> dict:
    """One step of ``env`` (same task, any device) with world i set to the recorded pre-step state ``rows[i]``
    (rows [env.num_envs] int, default 0..W-1) and its recorded action. Returns ``parity_violations``'s
    arguments: {"qvel" [W', nv], "head_z" [W'], "terms" {name: [W']}, "terminated" [W']} (tensors on env's
    device). Raises CapacityOverflowError if the step ran out of contact capacity."""
    rows = torch.arange(recording.rows) if rows is None else torch.as_tensor(rows)
    device, nq, nv = env.device, env.mj_model.nq, env.mj_model.nv
    env.set_state(recording.qpos[rows].to(device), recording.qvel[rows].to(device),
                  recording.warmstart[rows].to(device), {k: v[rows].to(device) for k, v in recording.state.items()})
    _, reward, terminated, _, info = env.step(recording.action[rows].to(device), readouts=True)
    env.check()
    terms = {name: reward if name == "reward" else info[name] for name in recording.reference.terms}
    return {"qvel": info["final_observation"][:, nq:nq + nv], "head_z": info["reward_inputs"]["head_z"],
            "terms": terms, "terminated": terminated}


def mujoco_step(mj_model: mujoco.MjModel, recording: Recording, frame_skip: int) -> dict:
    """The recorded steps again in MuJoCo's C library (float64, the model compiled from the same XML), world by
    world from the same qpos, qvel, warm start and controls: {"qvel" [W, nv], "head_z" [W]} (numpy). The head
    height is the site's after the last substep's forward pass, where the env reads it."""
    data = mujoco.MjData(mj_model)
    head = mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_SITE, "head")
    qvel, head_z = np.zeros((recording.rows, mj_model.nv)), np.zeros(recording.rows)
    for row in range(recording.rows):
        mujoco.mj_resetData(mj_model, data)
        data.qpos[:] = recording.qpos[row].double().numpy()
        data.qvel[:] = recording.qvel[row].double().numpy()
        data.qacc_warmstart[:] = recording.warmstart[row].double().numpy()
        data.ctrl[:] = recording.ctrl[row].double().numpy()
        for _ in range(frame_skip):
            mujoco.mj_step(mj_model, data)
        qvel[row], head_z[row] = data.qvel, data.site_xpos[head, 2]
    return {"qvel": qvel, "head_z": head_z}
