"""Batched tasks on MuJoCo-Warp: many worlds of one model, rewards and resets on device.

``BatchedEnv`` holds the task-independent machinery (Warp arrays viewed as torch tensors, physics
substeps with CUDA-graph replay, action checks, auto-reset by mask, episode statistics, diverged
worlds, capacity overflow); a task subclass supplies the model, the reset distribution, the
observation and the reward. ``HumanoidBenchEnv`` is the HumanoidBench one (robots h1 and h1hand; the
task-specific resets and observations are ``TASK_HOOKS``); ``cartpole.CartpoleEnv`` is dm_control's
cartpole on our own MJCF.

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
  - Capacity: ``CAPACITIES`` below (measured contacts / constraint rows, 2-3x headroom).
So the XML's options stay as they are. Parity per task: ``tests/test_envs_step.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional, Sequence

import mujoco
import torch

from . import rewards
from .capture import capture_graph, check_graph_driver
from .device import DeviceLike, canonical_device, check_device, warp_device
from .scene import HUMANOIDBENCH_ROBOTS, Capacity, TaskId, load_mj_model, parse_task_id, put_warp

__all__ = ["BatchedEnv", "HumanoidBenchEnv", "make", "Capacity", "CapacityOverflowError", "DEFAULT_CAPACITY",
           "CAPACITIES", "capacity_for", "FRAME_SKIP", "RESET_NOISE", "RNG_LANES", "TIME_LIMIT", "TASK_HOOKS",
           "TaskHooks", "hashed_uniform", "yaw_quaternion"]

FRAME_SKIP = 10  # physics steps per env step: 0.002 s x 10 = 50 Hz, HumanoidBench's frame_skip
RESET_NOISE = 0.01  # reset adds U(-0.01, 0.01) to every qpos entry (HumanoidBench's reset_noise_scale)
TIME_LIMIT = 1000  # HumanoidBench's max_episode_steps
EXPLODED_QVEL = 1e4  # a world whose |qvel| exceeds this (or is not finite) has diverged: reset it
# The recordings peak at 15 contacts per world (h1, falls included); 3x that, 4 pyramidal rows each.
DEFAULT_CAPACITY = Capacity(contacts=48, constraints=256)
# Contact and constraint-row capacity per world, by robot. h1hand, measured on MuJoCo-Warp (CPU) over one
# env step (all 10 substeps) from each of the 400 recorded states of every h1hand recording (falls and
# random actions included): at most 87 contacts and 396 constraint rows in a world (slide; the other
# tasks 35-77 contacts, 196-356 rows; p99 over worlds 25-51 contacts, 153-253 rows; the recordings'
# own aux_ncon peaks at 67). Capacity 2.2x / 2.6x that: ~0.45 MB of MuJoCo-Warp data per world
# (3.7 GB at 8192 worlds) against 0.17 MB at h1's 48/256; no measurable steps/s difference on the CPU
# between 512 and 1024 rows (within the machine's noise).
CAPACITIES = {"h1": DEFAULT_CAPACITY, "h1hand": Capacity(contacts=192, constraints=1024)}
# Lane ranges of ``hashed_uniform``, one per draw of a reset, so the draws are independent streams.
RNG_LANES = {"qpos_noise": 0, "sit_hard_pose": 1 << 20, "reach_goal": 2 << 20, "stagger": 3 << 20}


def capacity_for(robot: str) -> Capacity:
    """The default contact/constraint capacity of a robot's scenes ("h1", "h1hand"); see CAPACITIES."""
    if robot not in CAPACITIES:
        raise ValueError(f"no capacity for robot {robot!r}; known: {', '.join(CAPACITIES)}")
    return CAPACITIES[robot]


class CapacityOverflowError(RuntimeError):
    """MuJoCo-Warp ran out of contact or constraint capacity: contacts would have been dropped."""


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2**32)."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def hashed_uniform(seed: int, world: torch.Tensor, counter: torch.Tensor, width: int, low: float,
                   high: float, lane_offset: int = 0) -> torch.Tensor:
    """Per-world reproducible uniforms: [W, width] float32 in [low, high).

    A counter-based generator: the draw of world w at its n-th reset depends only on (seed, w, n),
    not on which other worlds reset, the device, or the order of calls; no generator state to sync.
    Column j hashes lane ``lane_offset + j``: draws over disjoint lane ranges (``RNG_LANES``) are
    independent streams for the same (seed, w, n).
    """
    lane = torch.arange(lane_offset, lane_offset + width, device=world.device, dtype=torch.int64)
    x = _mix32((seed * 0x9E3779B1 + world.long()) & 0xFFFFFFFF)
    x = _mix32((x + counter.long() * 0x85EBCA6B) & 0xFFFFFFFF)
    x = _mix32((x[:, None] + lane * 0xC2B2AE35 + 1) & 0xFFFFFFFF)
    unit = (x >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return low + (high - low) * unit


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


class BatchedEnv:
    """``num_envs`` worlds of one task on MuJoCo-Warp: the machinery every task shares.

    Observations, rewards, terminations and resets are torch tensors on ``device`` that share memory
    with Warp's arrays. ``step`` never reads back to the host unless ``validate=True`` (the default),
    which checks the actions for NaN and the previous step for capacity overflow with one read; a
    training loop passes ``validate=False`` and calls ``check()`` now and then.

    A subclass sets ``frame_skip`` and implements ``_load_model`` (the MuJoCo C model),
    ``observation``, ``_initial_state`` (the reset distribution, drawn from the per-world
    counter-based RNG) and ``_task_step`` (reward, termination and reward terms after the physics);
    optionally ``_reset_task_state`` (task state such as HumanoidBench's maze stage).

    Staggered starts: ``reset(stagger=True)`` credits each world a random number of elapsed steps
    toward the time limit (``start_elapsed``), so the first episodes of thousands of worlds end
    uniformly over 1..time_limit steps instead of all at once; the physics state is the usual reset.

    Attributes:
      task: the TaskId; obs_dim, action_dim; num_envs; device (torch.device); mj_model; time_limit.
      episode_return [W] float32, episode_length [W] int64: of the current episode (steps taken since
        the world's last reset).
      start_elapsed [W] int64: steps credited toward the time limit at the start of the current
        episode (``reset(stagger=True)``'s draw; 0 otherwise, and 0 again once the world resets). A
        world is truncated when ``episode_length + start_elapsed >= time_limit``.
    """

    frame_skip: int = FRAME_SKIP

    def __init__(self, task: str, num_envs: int, device: DeviceLike = None, seed: int = 0,
                 time_limit: int = TIME_LIMIT, ignore_termination: bool = False,
                 capacity: Capacity = DEFAULT_CAPACITY):
        self.task: TaskId = parse_task_id(task)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if isinstance(time_limit, bool) or not isinstance(time_limit, int) or time_limit < 1:
            raise ValueError(f"time_limit must be an integer >= 1, got {time_limit!r}")
        self.device = canonical_device(device)  # explicit index: compares equal to its tensors' device
        if self.device.type == "cuda":
            check_graph_driver()  # before any allocation: the physics runs as CUDA graphs
        self.num_envs, self.seed = num_envs, int(seed)
        self.time_limit, self.ignore_termination = time_limit, bool(ignore_termination)
        self.capacity = capacity
        self.mj_model = m = self._load_model()
        self.action_dim = m.nu

        import warp as wp

        self._wp_device = warp_device(self.device)
        self.model, self.data = put_warp(m, num_envs, capacity, device=self._wp_device)
        d, view = self.data, wp.to_torch
        self._qpos, self._qvel, self._ctrl = view(d.qpos), view(d.qvel), view(d.ctrl)
        self._warmstart, self._time = view(d.qacc_warmstart), view(d.time)
        self._overflow = view(d.overflow)

        dev = self.device
        # Actions in [-1, 1] are un-normalised to the float32-rounded ctrlrange, in float32.
        self._ctrl_low = torch.tensor(m.actuator_ctrlrange[:, 0], dtype=torch.float32, device=dev)
        self._ctrl_high = torch.tensor(m.actuator_ctrlrange[:, 1], dtype=torch.float32, device=dev)
        self._worlds = torch.arange(num_envs, device=dev)
        self._resets = torch.zeros(num_envs, dtype=torch.int64, device=dev)  # per-world reset counter (RNG)
        self.episode_return = torch.zeros(num_envs, device=dev)
        self.episode_length = torch.zeros(num_envs, dtype=torch.int64, device=dev)
        self.start_elapsed = torch.zeros(num_envs, dtype=torch.int64, device=dev)  # stagger's time-limit credit
        self.bad_world_resets = torch.zeros((), dtype=torch.int64, device=dev)  # diverged worlds reset so far
        self._overflow_seen = torch.zeros((), dtype=torch.int32, device=dev)
        self.state: dict = {}  # task state carried across steps (reset per world with the episode)
        self._graph = None
        self.obs_dim = self._obs_dim()

    # --- task hooks ------------------------------------------------------------------------------
    def _load_model(self) -> mujoco.MjModel:
        raise NotImplementedError

    def _obs_dim(self) -> int:
        raise NotImplementedError

    def observation(self) -> torch.Tensor:
        """[W, obs_dim] float32 observation of the current state (a copy)."""
        raise NotImplementedError

    def _initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reset draw of every world: qpos [W, nq], qvel [W, nv], from ``hashed_uniform(self.seed,
        self._worlds, self._resets, ...)`` so a world's draw depends on (seed, world, reset count) only."""
        raise NotImplementedError

    def _task_step(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """After the physics: reward [W], terminated [W] bool, reward terms {name: [W]}; may update
        ``self.state`` and ``self._overflow_seen``. No host synchronisation."""
        raise NotImplementedError

    def _reset_task_state(self, mask: torch.Tensor) -> None:
        """Resets the task state of the worlds where mask [W] is True (nothing by default). Runs after
        the new qpos/qvel are written and before the reset counter advances, so its draws
        (``hashed_uniform`` on its own ``RNG_LANES``) belong to the same reset as ``_initial_state``'s."""

    # ---------------------------------------------------------------------------------------------
    def reset(self, stagger: bool = False, stagger_multiple: int = 1) -> torch.Tensor:
        """Resets every world (the task's reset distribution). Returns obs [W, obs_dim].

        Args:
          stagger: also draw, per world, a number of steps e_w uniform in {0, ..., time_limit - 1}
            (``start_elapsed``) counted as already elapsed toward the time limit, so world w's first
            episode is truncated after time_limit - e_w steps: uniformly over 1..time_limit, instead
            of every world ending (and restarting) at the same step. Only the first episode is
            shortened (later ones run the full time limit) and the observation is the same as
            without stagger. The draw is on device (no host sync) from the counter-based RNG on its
            own lanes (``RNG_LANES["stagger"]``): it depends on (seed, world, reset count) only,
            and leaves every other draw unchanged. ``info``'s episode_return / episode_length at the
            first episode's end count the steps actually taken (time_limit - e_w).
          stagger_multiple: e_w is drawn uniformly among the multiples of this in [0, time_limit), so
            that an agent deciding every ``stagger_multiple`` steps (action repeat) still sees every
            episode end on a decision boundary when time_limit is a multiple of it.
        """
        if isinstance(stagger_multiple, bool) or not isinstance(stagger_multiple, int) or stagger_multiple < 1:
            raise ValueError(f"stagger_multiple must be an integer >= 1, got {stagger_multiple!r}")
        elapsed = self._stagger_draw(stagger_multiple) if stagger else 0  # drawn before the reset counter moves
        self._reset_worlds(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self.start_elapsed += elapsed  # the reset cleared it
        return self.observation()

    def _stagger_draw(self, multiple: int = 1) -> torch.Tensor:
        """[W] int64 uniform among the multiples of ``multiple`` in [0, time_limit), from (seed, world,
        reset count) on lanes ``RNG_LANES["stagger"]``: the 24-bit uniform k/2**24 maps to
        floor(k * n / 2**24) * multiple with n = time_limit // multiple choices, in integers (exact; bias at
        most n / 2**24 per value)."""
        unit = hashed_uniform(self.seed, self._worlds, self._resets, 1, 0.0, 1.0, lane_offset=RNG_LANES["stagger"])
        k = (unit[:, 0] * (1 << 24)).long()  # exact: the uniform is a multiple of 2**-24
        choices = max(self.time_limit // multiple, 1)
        return ((k * choices) >> 24) * multiple

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor, qacc_warmstart: Optional[torch.Tensor] = None,
                  state: Optional[dict] = None) -> None:
        """Overwrites the physics state of every world ([W, nq], [W, nv], optional [W, nv] warmstart)
        and optionally the task state (e.g. the maze stage); for replays and tests."""
        self._qpos.copy_(qpos)
        self._qvel.copy_(qvel)
        self._warmstart.copy_(qacc_warmstart if qacc_warmstart is not None else torch.zeros_like(self._warmstart))
        if state is not None:
            self.state = {k: v.to(self.device) for k, v in state.items()}

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue these worlds exactly: physics state (qpos, qvel,
        warmstart, ctrl, time), episode counters (with the stagger credit ``start_elapsed``), reset
        counters (the RNG), task state, time limit."""
        return {"qpos": self._qpos.clone(), "qvel": self._qvel.clone(), "warmstart": self._warmstart.clone(),
                "ctrl": self._ctrl.clone(), "time": self._time.clone(), "resets": self._resets.clone(),
                "episode_return": self.episode_return.clone(), "episode_length": self.episode_length.clone(),
                "start_elapsed": self.start_elapsed.clone(), "bad_world_resets": self.bad_world_resets.clone(),
                "state": dict(self.state), "time_limit": self.time_limit, "task": str(self.task),
                "num_envs": self.num_envs}

    def load_state_dict(self, state: dict) -> None:
        """Restores ``state_dict()`` of an env of the same task and world count (a state saved before
        ``start_elapsed`` existed restores it as 0: no stagger credit)."""
        if state["task"] != str(self.task) or state["num_envs"] != self.num_envs:
            raise ValueError(f"state of {state['task']} x{state['num_envs']} cannot load into {self.task} "
                             f"x{self.num_envs}")
        for name, target in (("qpos", self._qpos), ("qvel", self._qvel), ("warmstart", self._warmstart),
                             ("ctrl", self._ctrl), ("time", self._time), ("resets", self._resets),
                             ("episode_return", self.episode_return), ("episode_length", self.episode_length),
                             ("bad_world_resets", self.bad_world_resets)):
            target.copy_(state[name])
        self.start_elapsed.copy_(state.get("start_elapsed", torch.zeros_like(self.start_elapsed)))
        self.state = {k: v.to(self.device) for k, v in state["state"].items()}
        self.time_limit = state["time_limit"]

    def _reset_worlds(self, mask: torch.Tensor) -> None:
        """Resets the worlds where mask [W] is True, on device and without reading the mask."""
        qpos, qvel = self._initial_state()
        column = mask[:, None]
        self._qpos.copy_(torch.where(column, qpos, self._qpos))
        self._qvel.copy_(torch.where(column, qvel, self._qvel))
        self._warmstart.masked_fill_(column, 0.0)
        self._ctrl.masked_fill_(column, 0.0)
        self._time.masked_fill_(mask, 0.0)
        self.episode_return.masked_fill_(mask, 0.0)
        self.episode_length.masked_fill_(mask, 0)
        self.start_elapsed.masked_fill_(mask, 0)
        self._reset_task_state(mask)  # before the counter moves on: its draws share the reset's count
        self._resets += mask

    # ---------------------------------------------------------------------------------------------
    def _check_action(self, action: torch.Tensor, validate: bool) -> None:
        if not isinstance(action, torch.Tensor):
            raise TypeError(f"action must be a torch.Tensor [num_envs, {self.action_dim}], got {type(action).__name__}")
        if tuple(action.shape) != (self.num_envs, self.action_dim):
            raise ValueError(f"action must have shape [{self.num_envs}, {self.action_dim}] for {self.task}, "
                             f"got {list(action.shape)}")
        if not action.is_floating_point():
            raise TypeError(f"action must be a floating-point tensor, got {action.dtype}")
        check_device(action, self.device, "action", "env")
        if validate:
            nan, overflow = torch.stack([torch.isnan(action).any().int(), self._overflow_seen]).tolist()
            if nan:
                raise ValueError("action contains NaN (actions must be finite; values outside [-1, 1] are clipped)")
            if overflow:
                self.check()

    def check(self) -> None:
        """Raises CapacityOverflowError if any step so far ran out of contact/constraint capacity."""
        flags = int(self._overflow_seen)
        if flags:
            raise CapacityOverflowError(
                f"{self.task}: MuJoCo-Warp overflowed its capacity (overflow bits {flags:#x}: "
                f"contacts {self.capacity.contacts}/world, constraint rows {self.capacity.constraints}/world); "
                "contacts would be dropped. Make the env with a larger capacity=Capacity(contacts=..., "
                "constraints=...).")

    def _warp_scope(self) -> contextlib.AbstractContextManager:
        """Warp's device, and on CUDA torch's current stream, so Warp launches order with torch ops."""
        import warp as wp

        scope = contextlib.ExitStack()
        scope.enter_context(wp.ScopedDevice(self._wp_device))
        if self.device.type == "cuda":
            scope.enter_context(wp.ScopedStream(wp.stream_from_torch(torch.cuda.current_stream(self.device))))
        return scope

    def _physics(self) -> None:
        """``frame_skip`` physics steps; on CUDA replayed from a captured graph (captured on first use, on
        its own stream: ``capture.capture_graph``)."""
        with self._warp_scope():
            if self.device.type != "cuda":
                self._record_physics()
                return
            if self._graph is None:
                self._graph = capture_graph(self.device, self._record_physics)
            self._graph.launch()

    def _record_physics(self) -> None:
        import mujoco_warp as mjw

        for _ in range(self.frame_skip):
            mjw.step(self.model, self.data)

    def step(self, action: torch.Tensor, validate: bool = True):
        """One env step (``frame_skip`` physics steps) for every world, with auto-reset.

        Args:
          action: [num_envs, action_dim] float in [-1, 1] (outside values are clipped); NaN is an error
            when ``validate``; without it, a world with a NaN action steps with zero controls and ends
            diverged (reward 0, truncated, reset).
          validate: read one flag back to check for NaN actions and earlier capacity overflow.

        Returns:
          obs [W, obs_dim] (the new episode's first observation where a world was reset), reward [W],
          terminated [W] bool, truncated [W] bool (time limit, or a diverged world), info: every reward
          term [W], ``final_observation`` [W, obs_dim] (the observation before any reset),
          ``episode_return`` / ``episode_length`` [W] (of the episode that just ended, where ``done``:
          reward summed and steps taken since the world's reset, so a staggered first episode reports
          its own, shorter, length),
          ``done`` [W] bool, ``diverged`` [W] bool.
        """
        self._check_action(action, validate)
        # A world given a NaN action (validate=False) steps with zero controls and ends as diverged.
        bad_action = torch.isnan(action).any(1)
        clipped = torch.where(bad_action[:, None], 0.0, action.to(torch.float32).clamp(-1.0, 1.0))
        self._ctrl.copy_((clipped + 1.0) / 2.0 * (self._ctrl_high - self._ctrl_low) + self._ctrl_low)
        self._physics()
        self._overflow_seen |= (self._overflow != 0).any().int()
        reward, terminated, terms = self._task_step()
        obs = self.observation()
        diverged = ~torch.isfinite(obs).all(1) | (self._qvel.abs() > EXPLODED_QVEL).any(1) | bad_action
        reward = torch.where(diverged, 0.0, reward)
        self.bad_world_resets += diverged.sum()
        if self.ignore_termination:
            terminated = torch.zeros_like(terminated)
        terminated = terminated & ~diverged
        self.episode_return += reward
        self.episode_length += 1
        truncated = (self.episode_length + self.start_elapsed >= self.time_limit) | diverged
        done = terminated | truncated
        info = dict(terms, final_observation=obs, episode_return=self.episode_return.clone(),
                    episode_length=self.episode_length.clone(), done=done, diverged=diverged)
        self._reset_worlds(done)
        return torch.where(done[:, None], self.observation(), obs), reward, terminated, truncated, info


# --- task-specific resets and observations -----------------------------------------------------
# HumanoidBench's tasks share the reset (keyframe 0 + U(-0.01, 0.01) on qpos, zero qvel) and the
# observation (qpos ⊕ qvel); a few add to them. Each addition is a hook in ``TASK_HOOKS``, keyed by
# the robot-independent task name, so HumanoidBenchEnv itself has no per-task branches.

SIT_HARD_X = (0.2, 0.4)  # sit_hard's reset: robot x, y (m) and yaw (rad) ranges, uniform
SIT_HARD_Y = (-0.15, 0.15)
SIT_HARD_YAW = (-1.8, 1.8)
REACH_GOAL_LOW, REACH_GOAL_HIGH = (-2.0, -2.0, 0.2), (2.0, 2.0, 2.0)  # reach's goal box (m), uniform


def yaw_quaternion(yaw: torch.Tensor) -> torch.Tensor:
    """[W] yaw (rad) -> [W, 4] unit quaternion (w, x, y, z) of that rotation about z: HumanoidBench's
    ``euler_to_quat((0, 0, yaw))`` = (cos(yaw/2), 0, 0, sin(yaw/2))."""
    zero = torch.zeros_like(yaw)
    return torch.stack([torch.cos(yaw / 2), zero, zero, torch.sin(yaw / 2)], dim=1)


def _sit_hard_pose(env: "HumanoidBenchEnv", qpos: torch.Tensor) -> torch.Tensor:
    """sit_hard: after keyframe + noise, the robot's x, y and yaw are redrawn (HumanoidBench's
    ``SitHard.reset_model``); the root quaternion becomes yaw-only. qpos [W, nq] -> [W, nq]."""
    ranges = (SIT_HARD_X, SIT_HARD_Y, SIT_HARD_YAW)
    x, y, yaw = env._uniform("sit_hard_pose", [r[0] for r in ranges], [r[1] for r in ranges]).unbind(1)
    qpos = qpos.clone()
    qpos[:, 0], qpos[:, 1], qpos[:, 3:7] = x, y, yaw_quaternion(yaw)
    return qpos


def _reach_goal(env: "HumanoidBenchEnv", mask: torch.Tensor) -> None:
    """reach: a new goal U(REACH_GOAL_LOW, REACH_GOAL_HIGH) for the worlds where mask [W] is True
    (``state["reach_goal"]`` [W, 3]; HumanoidBench's ``Reach.reset_model``)."""
    goal = env._uniform("reach_goal", REACH_GOAL_LOW, REACH_GOAL_HIGH)
    env.state["reach_goal"] = torch.where(mask[:, None], goal, env.state["reach_goal"])


def _reach_observation(env: "HumanoidBenchEnv") -> torch.Tensor:
    """reach's extra observation: left hand site position ⊕ goal, [W, 6]."""
    return torch.cat([env._site_xpos[:, env._readout_ids.left_hand], env.state["reach_goal"]], dim=1)


@dataclasses.dataclass(frozen=True)
class TaskHooks:
    """What one HumanoidBench task adds to the shared reset and observation.

    Attributes:
      reset_pose: (env, qpos [W, nq]) -> qpos [W, nq], applied to every world's keyframe + noise draw
        (the env keeps it only for the worlds that reset).
      reset_state: (env, mask [W] bool) -> None, updates ``env.state`` for the worlds being reset.
      extra_obs: (env) -> [W, extra_obs_dim], appended after qpos ⊕ qvel.
      kinematics_after_reset: recompute body/site poses from qpos after a reset, because
        ``extra_obs`` reads a site pose: otherwise a reset world's first observation would show the
        pose of the last substep before the reset (see ``HumanoidBenchEnv._reset_task_state``).
    """

    reset_pose: Optional[Callable[["HumanoidBenchEnv", torch.Tensor], torch.Tensor]] = None
    reset_state: Optional[Callable[["HumanoidBenchEnv", torch.Tensor], None]] = None
    extra_obs: Optional[Callable[["HumanoidBenchEnv"], torch.Tensor]] = None
    extra_obs_dim: int = 0
    kinematics_after_reset: bool = False


TASK_HOOKS = {
    "sit_hard": TaskHooks(reset_pose=_sit_hard_pose),
    "reach": TaskHooks(reset_state=_reach_goal, extra_obs=_reach_observation, extra_obs_dim=6,
                       kinematics_after_reset=True),
}


class HumanoidBenchEnv(BatchedEnv):
    """``num_envs`` worlds of one HumanoidBench task on MuJoCo-Warp (``../shared/spec/envs.md``).

    Observation qpos ⊕ qvel (reach: ⊕ left hand position ⊕ goal); reset keyframe 0 + U(-0.01, 0.01) on
    qpos, zero qvel, then the task's hook (``TASK_HOOKS``: sit_hard's pose, reach's goal); 10 physics
    steps per env step; HumanoidBench's rewards and terminations (``rewards.compute``). ``root``: where
    HumanoidBench's assets are (see ``resolve_root``); ``capacity``: contact/constraint capacity per
    world, default ``capacity_for(robot)``.
    """

    frame_skip = FRAME_SKIP

    def __init__(self, task: str, num_envs: int, device: DeviceLike = None, seed: int = 0,
                 time_limit: int = TIME_LIMIT, ignore_termination: bool = False, root=None,
                 capacity: Optional[Capacity] = None):
        parsed = parse_task_id(task)
        if parsed.robot not in HUMANOIDBENCH_ROBOTS:
            raise ValueError(f"{task!r} is not a HumanoidBench task; make it with ezm_gpu.envs.make")
        self._root = root
        self._hooks = TASK_HOOKS.get(parsed.task, TaskHooks())
        super().__init__(task, num_envs, device=device, seed=seed, time_limit=time_limit,
                         ignore_termination=ignore_termination,
                         capacity=capacity if capacity is not None else capacity_for(parsed.robot))
        import warp as wp

        m, d, view, dev = self.mj_model, self.data, wp.to_torch, self.device
        self._readout_ids = _Readout.of(m)
        self._site_xpos, self._xpos, self._xquat, self._xmat = (view(d.site_xpos), view(d.xpos), view(d.xquat),
                                                                 view(d.xmat))
        self._sensordata, self._actuator_force = view(d.sensordata), view(d.actuator_force)
        self._contact_geom, self._contact_world = view(d.contact.geom), view(d.contact.worldid)
        self._nacon = view(d.nacon)
        self._key_qpos = torch.tensor(m.key_qpos[0], dtype=torch.float32, device=dev)
        geom_names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, i) or "" for i in range(m.ngeom)]
        self._constants = rewards.task_constants(str(self.task), geom_names, device=dev, dtype=torch.float32)
        self.state = rewards.initial_state(str(self.task), num_envs, device=dev, dtype=torch.float32)

    def _load_model(self) -> mujoco.MjModel:
        return load_mj_model(str(self.task), self._root)

    def _obs_dim(self) -> int:
        return self.mj_model.nq + self.mj_model.nv + self._hooks.extra_obs_dim

    def observation(self) -> torch.Tensor:
        """qpos ⊕ qvel (⊕ the task's extra observation), [W, obs_dim] float32 (a copy)."""
        parts = [self._qpos, self._qvel]
        if self._hooks.extra_obs is not None:
            parts.append(self._hooks.extra_obs(self))
        return torch.cat(parts, dim=1)

    def _uniform(self, lanes: str, low: Sequence[float], high: Sequence[float]) -> torch.Tensor:
        """[W, len(low)] draws of this reset (seed, world, reset count) on lane range ``RNG_LANES[lanes]``,
        column j uniform in [low[j], high[j]). The bounds stay Python floats: no host-to-device copy on
        the reset path, which runs every step."""
        u = hashed_uniform(self.seed, self._worlds, self._resets, len(low), 0.0, 1.0, lane_offset=RNG_LANES[lanes])
        return torch.stack([lo + (hi - lo) * u[:, j] for j, (lo, hi) in enumerate(zip(low, high))], dim=1)

    def _initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        noise = hashed_uniform(self.seed, self._worlds, self._resets, self.mj_model.nq, -RESET_NOISE, RESET_NOISE,
                               lane_offset=RNG_LANES["qpos_noise"])
        qpos = self._key_qpos + noise
        if self._hooks.reset_pose is not None:
            qpos = self._hooks.reset_pose(self, qpos)
        return qpos, torch.zeros_like(self._qvel)

    def _reset_task_state(self, mask: torch.Tensor) -> None:
        self.state = rewards.reset_state(self.state, mask)
        if self._hooks.reset_state is not None:
            self._hooks.reset_state(self, mask)
        if self._hooks.kinematics_after_reset:
            # Body/site poses of a reset world still describe its last substep before the reset.
            # HumanoidBench's reset ends in mj_forward, so its first observation shows the reset pose:
            # recompute the kinematics (poses only, no dynamics) from the new qpos. MuJoCo-Warp has no
            # per-world mask here, so every world is recomputed; that is harmless, because this
            # step's rewards and observations of the other worlds were read before the reset and
            # the next physics step recomputes everything. Cost: one kinematics pass (<1/10 of one
            # substep's forward pass) per env step, for the tasks that need it (reach).
            self._kinematics()

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


def make(task: str, num_envs: int, device: DeviceLike = None, seed: int = 0, **kwargs) -> BatchedEnv:
    """One task, ``num_envs`` worlds: ``HumanoidBenchEnv`` for ids like "h1-walk" ("-v0" accepted),
    ``CartpoleEnv`` for "cartpole-balance" / "cartpole-swingup"; kwargs go to the env class."""
    if parse_task_id(task).robot == "cartpole":
        from .cartpole import CartpoleEnv

        return CartpoleEnv(task, num_envs, device=device, seed=seed, **kwargs)
    return HumanoidBenchEnv(task, num_envs, device=device, seed=seed, **kwargs)
