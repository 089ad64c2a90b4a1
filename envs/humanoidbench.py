"""HumanoidBench's tasks (robots h1 and h1hand) as a ``BatchedEnv``: ``HumanoidBenchEnv``.

The family's shared parts live here: HumanoidBench's scenes, 10 physics steps per env step, the reset
(keyframe 0 + U(-0.01, 0.01) on qpos, zero qvel) and the physics readout the rewards take
(``rewards.RewardInputs``). What a task adds (reward, termination, sit_hard's pose, reach's goal and
observation, contact constants, task state) is its ``registry.TASKS`` entry.

h1hand (H1 + two Shadow hands, 61 actuators; nv 75, 81 for sit_hard / balance_simple, 87 for
balance_hard) is beyond the 60 DoF MuJoCo-Warp's dense path supports. Measured on the CPU (MuJoCo-Warp
4.0.0, Warp 1.19.0; parity = one env step from the 400 recorded states of h1hand-walk and
h1hand-balance_hard; steps/s = 64 worlds, random actions, on a loaded 2-core VM, so only ratios count):
  - Jacobian: the XML leaves ``jacobian`` at auto, and MuJoCo-Warp picks sparse for nv > 32 (h1: nv 25,
    dense; h1-balance_hard, nv 37, sparse). Dense is refused for nv > 60 ("Dense is unsupported for
    nv > 60"), so h1hand runs sparse; there is nothing to choose.
  - Solver iterations: the XML's Newton solver, 100 iterations, 50 line-search iterations, kept for
    parity. The solver converges in 4.6 iterations on average (p99 9, max 13; balance_hard 4.9 / 9 /
    12), and its loop stops once every world has converged (``wp.capture_while``: a graph conditional
    on CUDA, a host-checked loop on the CPU), so the cap of 100 costs nothing: 20 iterations give
    bit-identical results and the same speed; 5 cuts the slower solves short (uncapped p99: 9) and
    moves the state |diff| median from 0.145 to 0.150. Turning ``opt.graph_conditional`` off runs all 100 iterations (converged
    worlds idle): 2.8x (walk) to 5x (balance_hard) fewer steps/s, same results.
  - ``ls_parallel``: removed in MuJoCo-Warp 3.9.1 (put_model refuses it); the line search is iterative.
  - Capacity: ``registry.CAPACITIES`` (measured contacts / constraint rows, 2-3x headroom).
So the XML's options stay as they are. Parity per task: ``tests/test_envs_step.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import mujoco
import torch

from . import rewards
from .base import RNG_LANES, BatchedEnv, hashed_uniform
from .device import DeviceLike
from .registry import HUMANOIDBENCH, Capacity, HumanoidBenchSpec
from .scene import geom_names

__all__ = ["HumanoidBenchEnv", "FRAME_SKIP", "RESET_NOISE"]

FRAME_SKIP = 10  # physics steps per env step: 0.002 s x 10 = 50 Hz, HumanoidBench's frame_skip
RESET_NOISE = 0.01  # reset adds U(-0.01, 0.01) to every qpos entry (HumanoidBench's reset_noise_scale)


@dataclasses.dataclass(frozen=True)
class _Readout:
    """Ids of the model objects the rewards read (-1: the scene has no such object)."""

    head: int
    left_foot: int
    right_foot: int
    imu: int
    left_hand: int  # site (reach's hand position; every h1/h1hand scene has it)
    torso: int
    pelvis: int
    chair: int  # body (sit_simple, sit_hard), else -1
    com_velocity: int  # sensordata address of pelvis_subtreelinvel

    @classmethod
    def of(cls, m: mujoco.MjModel) -> "_Readout":
        def find(kind, name, required=True):
            index = mujoco.mj_name2id(m, kind, name)
            if index < 0 and required:
                raise ValueError(f"the scene has no {kind.name[6:].lower()} named {name!r}")
            return index

        site, body, sensor = mujoco.mjtObj.mjOBJ_SITE, mujoco.mjtObj.mjOBJ_BODY, mujoco.mjtObj.mjOBJ_SENSOR
        return cls(head=find(site, "head"), left_foot=find(site, "left_foot"), right_foot=find(site, "right_foot"),
                   imu=find(site, "imu"), left_hand=find(site, "left_hand"), torso=find(body, "torso_link"),
                   pelvis=find(body, "pelvis"), chair=find(body, "chair", required=False),
                   com_velocity=int(m.sensor_adr[find(sensor, "pelvis_subtreelinvel")]))


class HumanoidBenchEnv(BatchedEnv):
    """``num_envs`` worlds of one HumanoidBench task on MuJoCo-Warp (``docs/envs.md``).

    Observation qpos ⊕ qvel (reach: ⊕ left hand position ⊕ goal: the spec's ``observation``); reset
    keyframe 0 + U(-0.01, 0.01) on qpos, zero qvel, then the spec's ``reset`` (sit_hard's pose) and
    ``reset_state`` (reach's goal); 10 physics steps per env step; HumanoidBench's rewards and
    terminations (``rewards.compute``). ``root``: where HumanoidBench's assets are (see
    ``resolve_root``); ``time_limit`` and ``capacity`` (contact/constraint capacity per world) default
    to the spec's (1000 steps, ``capacity_for(robot)``); ``cuda_graph``: see ``BatchedEnv``.
    """

    frame_skip = FRAME_SKIP
    family = HUMANOIDBENCH
    readout_names = ("reward_inputs",)
    spec: HumanoidBenchSpec

    def __init__(self, task: str, num_envs: int, device: DeviceLike = None, seed: int = 0,
                 time_limit: Optional[int] = None, ignore_termination: bool = False, root=None,
                 capacity: Optional[Capacity] = None, cuda_graph: bool = True):
        super().__init__(task, num_envs, device=device, seed=seed, time_limit=time_limit,
                         ignore_termination=ignore_termination, root=root, capacity=capacity, cuda_graph=cuda_graph)
        import warp as wp

        m, d, view, dev = self.mj_model, self.data, wp.to_torch, self.device
        self._readout_ids = _Readout.of(m)
        self._site_xpos, self._xpos, self._xquat, self._xmat = (view(d.site_xpos), view(d.xpos), view(d.xquat),
                                                                 view(d.xmat))
        self._sensordata, self._actuator_force = view(d.sensordata), view(d.actuator_force)
        self._contact_geom, self._contact_world = view(d.contact.geom), view(d.contact.worldid)
        self._nacon = view(d.nacon)
        self._key_qpos = torch.tensor(m.key_qpos[0], dtype=torch.float32, device=dev)
        self._constants = rewards.task_constants(str(self.task), geom_names(m), device=dev, dtype=torch.float32)
        self.state = rewards.initial_state(str(self.task), num_envs, device=dev, dtype=torch.float32)

    def _obs_dim(self) -> int:
        return self.mj_model.nq + self.mj_model.nv + self.spec.obs_extra_dim

    def observation(self) -> torch.Tensor:
        """qpos ⊕ qvel (⊕ the task's extra observation), [W, obs_dim] float32 (a copy)."""
        return self.spec.observation(self)

    def _initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        noise = hashed_uniform(self.seed, self._worlds, self._resets, self.mj_model.nq, -RESET_NOISE, RESET_NOISE,
                               lane_offset=RNG_LANES["qpos_noise"])
        qpos = self.spec.reset(self, self._key_qpos + noise)
        return qpos, torch.zeros_like(self._qvel)

    def _reset_task_state(self, mask: torch.Tensor) -> None:
        self.state = rewards.reset_state(self.state, mask)
        if self.spec.reset_state is not None:
            self.spec.reset_state(self, mask)
        if self.spec.kinematics_after_reset:
            # Body/site poses of a reset world still describe its last substep before the reset.
            # HumanoidBench's reset ends in mj_forward, so its first observation shows the reset pose:
            # recompute the kinematics (poses only, no dynamics) from the new qpos. MuJoCo-Warp has no
            # per-world mask here, so every world is recomputed; that is harmless, because this
            # step's rewards and observations of the other worlds were read before the reset and
            # the next physics step recomputes everything. Cost: one kinematics pass (<1/10 of one
            # substep's forward pass) per env step, for the tasks that need it (reach).
            self._kinematics()

    @property
    def reset_keyframe(self) -> torch.Tensor:
        """[nq] float32 the scene's keyframe 0: the reset pose before noise (a copy)."""
        return self._key_qpos.clone()

    def contacts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The contacts of the last physics substep, by world: [W, C, 2] int64 geom pairs (-1 padded;
        C = ``capacity.contacts``) and [W] bool, True where a world had more than C (the rest are not listed)."""
        return self._contacts_by_world()

    def _after_set_state(self) -> None:
        if self.spec.kinematics_after_reset:
            self._kinematics()

    def _readouts(self) -> dict:
        inputs = self._reward_inputs()
        return {"reward_inputs": {f.name: None if getattr(inputs, f.name) is None else getattr(inputs, f.name).clone()
                                  for f in dataclasses.fields(inputs)}}

    def _kinematics(self) -> None:
        """MuJoCo-Warp's forward kinematics (xpos, xquat, xmat, site and geom poses) of every world."""
        import mujoco_warp as mjw

        with self._warp_scope():
            mjw.kinematics(self.model, self.data)

    def _contacts_by_world(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MuJoCo-Warp's global contact list as per-world rows: [W, C, 2] geom pairs (-1 padded) and
        [W] bool, True where a world had more contacts than C (they would be missed)."""
        width, worlds = self.capacity.contacts, self.num_envs
        total = self._contact_world.shape[0]
        valid = torch.arange(total, device=self.device) < self._nacon.long()
        world = torch.where(valid, self._contact_world.long(), worlds)  # invalid contacts sort last
        world_sorted, order = torch.sort(world, stable=True)
        counts = torch.zeros(worlds + 1, dtype=torch.int64, device=self.device).scatter_add_(
            0, world, torch.ones_like(world))
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(total, device=self.device) - first[world_sorted]
        keep = (world_sorted < worlds) & (slot < width)
        target = torch.where(keep, world_sorted * width + slot, worlds * width)  # the last row is a bin
        rows = torch.full((worlds * width + 1, 2), -1, dtype=torch.int64, device=self.device)
        rows[target] = self._contact_geom[order].long()
        return rows[:-1].view(worlds, width, 2), counts[:worlds] > width

    def _reward_inputs(self) -> rewards.RewardInputs:
        """The rewards' inputs, read straight from MuJoCo-Warp's data after the step (no extra forward):
        qpos/qvel post-step, everything else from the last substep's forward pass."""
        ids = self._readout_ids
        contacts, missed = self._contacts_by_world()
        self._overflow_seen |= missed.any().int()  # (BatchedEnv.step folds in data.overflow)
        return rewards.RewardInputs(
            head_z=self._site_xpos[:, ids.head, 2], left_foot_z=self._site_xpos[:, ids.left_foot, 2],
            right_foot_z=self._site_xpos[:, ids.right_foot, 2], torso_upright=self._xmat[:, ids.torso, 2, 2],
            com_velocity=self._sensordata[:, ids.com_velocity:ids.com_velocity + 3],
            actuator_force=self._actuator_force, pelvis_xpos=self._xpos[:, ids.pelvis],
            pelvis_xquat=self._xquat[:, ids.pelvis], imu_xpos=self._site_xpos[:, ids.imu],
            qpos=self._qpos, qvel=self._qvel, contact_geom=contacts,
            left_hand_xpos=self._site_xpos[:, ids.left_hand],
            pelvis_upright=self._xmat[:, 1, 2, 2],  # body 1 by index, as HumanoidBench's reach reads it
            chair_xpos=self._xpos[:, ids.chair] if ids.chair >= 0 else None)

    def _task_step(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        reward, terminated, terms, self.state = rewards.compute(str(self.task), self._reward_inputs(),
                                                                 self._constants, self.state)
        return reward, terminated, terms
