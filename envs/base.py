"""The task-independent part of a batched MuJoCo-Warp env: ``BatchedEnv``, and the per-world RNG.

``BatchedEnv`` holds the machinery every task shares (Warp arrays viewed as torch tensors, physics
substeps with CUDA-graph replay, action checks, auto-reset by mask, episode statistics, diverged worlds,
capacity overflow); a family's subclass (``humanoidbench.HumanoidBenchEnv``, ``cartpole.CartpoleEnv``)
supplies the reset distribution, the observation and the reward, reading the task's facts from its
``registry.TaskSpec`` (``self.spec``). ``hashed_uniform`` is the counter-based generator every reset
draws from.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import mujoco
import torch

from .capture import capture_graph, check_graph_driver
from .device import DeviceLike, canonical_device, check_device, warp_device
from .registry import Capacity, TaskId, TaskSpec, task_spec
from .scene import load_mj_model, put_warp

__all__ = ["BatchedEnv", "CapacityOverflowError", "EXPLODED_QVEL", "RNG_LANES", "STEP_INFO", "hashed_uniform", "mix32"]

EXPLODED_QVEL = 1e4  # a world whose |qvel| exceeds this (or is not finite) has diverged: reset it
# Lane ranges of ``hashed_uniform``, one per draw of a reset, so the draws are independent streams.
RNG_LANES = {"qpos_noise": 0, "sit_hard_pose": 1 << 20, "reach_goal": 2 << 20, "stagger": 3 << 20}
# What ``step``'s info holds besides the reward terms ("ctrl" with ``readouts=True``, which also adds the task's
# own readouts: ``BatchedEnv.readout_names``).
STEP_INFO = frozenset({"final_observation", "episode_return", "episode_length", "done", "diverged", "ctrl"})


class CapacityOverflowError(RuntimeError):
    """MuJoCo-Warp ran out of contact or constraint capacity: contacts would have been dropped."""


def mix32(x: torch.Tensor) -> torch.Tensor:
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
    x = mix32((seed * 0x9E3779B1 + world.long()) & 0xFFFFFFFF)
    x = mix32((x + counter.long() * 0x85EBCA6B) & 0xFFFFFFFF)
    x = mix32((x[:, None] + lane * 0xC2B2AE35 + 1) & 0xFFFFFFFF)
    unit = (x >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return low + (high - low) * unit


class BatchedEnv:
    """``num_envs`` worlds of one task on MuJoCo-Warp: the machinery every task shares.

    Observations, rewards, terminations and resets are torch tensors on ``device`` that share memory
    with Warp's arrays. ``step`` never reads back to the host unless ``validate=True`` (the default),
    which checks the actions for NaN and the previous step for capacity overflow with one read; a
    training loop passes ``validate=False`` and calls ``check()`` now and then.

    A subclass sets ``frame_skip`` and ``family`` (the ``registry`` family whose tasks it runs) and
    implements ``_obs_dim``, ``observation``, ``_initial_state`` (the reset distribution, drawn from the
    per-world counter-based RNG) and ``_task_step`` (reward, termination and reward terms after the
    physics); optionally ``_reset_task_state`` (task state such as HumanoidBench's maze stage). The
    task's facts are ``self.spec``; ``time_limit`` and ``capacity`` default to the spec's, and the model
    is the spec's scene (``scene.load_mj_model``; ``root``: where HumanoidBench's assets are, see
    ``resolve_root``; unused by tasks that carry their own MJCF).

    Staggered starts: ``reset(stagger=True)`` credits each world a random number of elapsed steps
    toward the time limit (``start_elapsed``), so the first episodes of thousands of worlds end
    uniformly over 1..time_limit steps instead of all at once; the physics state is the usual reset.

    CUDA graphs: on CUDA the ``frame_skip`` physics steps are captured once as a CUDA graph and replayed
    (one launch per env step; MuJoCo-Warp's solver loops are conditional graph nodes, which need driver
    12.4+). ``cuda_graph=False`` launches the kernels directly instead: the solver loops then check their
    condition on the host after every iteration (a sync each), which is slower but needs no graph
    support (no driver check); the results are the same kernels' (``python -m ezm_gpu.selfcheck``
    compares both paths with the CPU). On CPU there is no graph and the option changes nothing.

    Attributes:
      task: the TaskId; spec: its registry.TaskSpec; obs_dim, action_dim; num_envs; device
        (torch.device); cuda_graph (bool, as made); mj_model (MuJoCo's C model); model, data (MuJoCo-Warp's,
        shared with the env: read them, do not step them); time_limit; capacity.
      qpos [W, nq], qvel [W, nv], ctrl [W, nu]: copies of the physics state and the last controls;
      ctrl_low, ctrl_high [nu]: the actuators' float32 control range (action -1 and +1).
      episode_return [W] float32, episode_length [W] int64: of the current episode (steps taken since
        the world's last reset).
      start_elapsed [W] int64: steps credited toward the time limit at the start of the current
        episode (``reset(stagger=True)``'s draw; 0 otherwise, and 0 again once the world resets). A
        world is truncated when ``episode_length + start_elapsed >= time_limit``.
    """

    frame_skip: int  # physics steps per env step
    family: str  # the registry family whose tasks this class runs
    readout_names: tuple[str, ...] = ()  # the keys ``_readouts`` adds to ``step(readouts=True)``'s info

    def __init__(self, task: str, num_envs: int, device: DeviceLike = None, seed: int = 0,
                 time_limit: Optional[int] = None, ignore_termination: bool = False, root=None,
                 capacity: Optional[Capacity] = None, cuda_graph: bool = True):
        self.spec: TaskSpec = task_spec(task)
        if self.spec.family != self.family:
            raise ValueError(f"{task!r} is not a {self.family} task; make it with ezm_gpu.envs.make")
        self.task: TaskId = self.spec.task_id
        time_limit = self.spec.time_limit if time_limit is None else time_limit
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if isinstance(time_limit, bool) or not isinstance(time_limit, int) or time_limit < 1:
            raise ValueError(f"time_limit must be an integer >= 1, got {time_limit!r}")
        self.device = canonical_device(device)  # explicit index: compares equal to its tensors' device
        self.cuda_graph = bool(cuda_graph)
        if self.device.type == "cuda" and self.cuda_graph:
            check_graph_driver()  # before any allocation: the physics runs as CUDA graphs
        self.num_envs, self.seed = num_envs, int(seed)
        self.time_limit, self.ignore_termination = time_limit, bool(ignore_termination)
        self.capacity = self.spec.capacity if capacity is None else capacity
        self._root = root
        self.mj_model = m = self._load_model()
        self.action_dim = m.nu

        import warp as wp

        self._wp_device = warp_device(self.device)
        self.model, self.data = put_warp(m, num_envs, self.capacity, device=self._wp_device)
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
        """The task's MuJoCo (C) model: its spec's scene."""
        return load_mj_model(str(self.task), self._root)

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

    def _readouts(self) -> dict:
        """``step(readouts=True)``'s task-specific readouts after the physics, before any reset: name ->
        copies of tensors with a leading [W] (nothing by default)."""
        return {}

    def reward_terms(self, info: dict) -> dict:
        """The reward terms of a ``step``'s info: {name: [W]} (every entry but ``STEP_INFO`` and the readouts)."""
        return {name: value for name, value in info.items()
                if name not in STEP_INFO and name not in self.readout_names}

    def _after_set_state(self) -> None:
        """Brings derived quantities the observation reads (poses) in line with a state written by
        ``set_state`` (nothing by default: most observations read qpos and qvel only)."""

    def _reset_task_state(self, mask: torch.Tensor) -> None:
        """Resets the task state of the worlds where mask [W] is True (nothing by default). Runs after
        the new qpos/qvel are written and before the reset counter advances, so its draws
        (``hashed_uniform`` on its own ``RNG_LANES``) belong to the same reset as ``_initial_state``'s."""

    def _uniform(self, lanes: str, low: Sequence[float], high: Sequence[float]) -> torch.Tensor:
        """[W, len(low)] draws of this reset (seed, world, reset count) on lane range ``RNG_LANES[lanes]``,
        column j uniform in [low[j], high[j]). The bounds stay Python floats: no host-to-device copy on
        the reset path, which runs every step."""
        u = hashed_uniform(self.seed, self._worlds, self._resets, len(low), 0.0, 1.0, lane_offset=RNG_LANES[lanes])
        return torch.stack([lo + (hi - lo) * u[:, j] for j, (lo, hi) in enumerate(zip(low, high))], dim=1)

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

    @property
    def qpos(self) -> torch.Tensor:
        """[W, nq] float32 joint positions of every world (a copy)."""
        return self._qpos.clone()

    @property
    def qvel(self) -> torch.Tensor:
        """[W, nv] float32 joint velocities of every world (a copy)."""
        return self._qvel.clone()

    @property
    def ctrl(self) -> torch.Tensor:
        """[W, nu] float32 controls of the last step (a copy; 0 in a world reset since). ``step(...,
        readouts=True)`` reports the controls a step applied even where the world then reset."""
        return self._ctrl.clone()

    @property
    def ctrl_low(self) -> torch.Tensor:
        """[nu] float32 lower end of each actuator's control range (the control of action -1)."""
        return self._ctrl_low.clone()

    @property
    def ctrl_high(self) -> torch.Tensor:
        """[nu] float32 upper end of each actuator's control range (the control of action +1)."""
        return self._ctrl_high.clone()

    def reset_worlds(self, mask: torch.Tensor) -> torch.Tensor:
        """Resets the worlds where mask [W] bool is True (each draws its next reset), on device without
        reading the mask; the others keep their state. Returns obs [W, obs_dim]."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (self.num_envs,):
            raise ValueError(f"mask must be a [num_envs] = [{self.num_envs}] bool tensor, got "
                             f"{(mask.dtype, list(mask.shape)) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        check_device(mask, self.device, "mask", "env")
        self._reset_worlds(mask)
        return self.observation()

    def set_state(self, qpos: torch.Tensor, qvel: torch.Tensor, qacc_warmstart: Optional[torch.Tensor] = None,
                  state: Optional[dict] = None) -> None:
        """Overwrites the physics state of every world ([W, nq], [W, nv], optional [W, nv] warmstart)
        and optionally the task state (e.g. the maze stage), for replays and tests; ``observation()``
        then shows the new state (poses it reads are recomputed)."""
        self._qpos.copy_(qpos)
        self._qvel.copy_(qvel)
        self._warmstart.copy_(qacc_warmstart if qacc_warmstart is not None else torch.zeros_like(self._warmstart))
        if state is not None:
            self.state = {k: v.to(self.device) for k, v in state.items()}
        self._after_set_state()

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
        its own stream: ``capture.capture_graph``) unless the env was made with ``cuda_graph=False``."""
        with self._warp_scope():
            if self.device.type != "cuda" or not self.cuda_graph:
                self._record_physics()
                return
            if self._graph is None:
                self._graph = capture_graph(self.device, self._record_physics)
            self._graph.launch()

    def _record_physics(self) -> None:
        import mujoco_warp as mjw

        for _ in range(self.frame_skip):
            mjw.step(self.model, self.data)

    def step(self, action: torch.Tensor, validate: bool = True, readouts: bool = False):
        """One env step (``frame_skip`` physics steps) for every world, with auto-reset.

        Args:
          action: [num_envs, action_dim] float in [-1, 1] (outside values are clipped); NaN is an error
            when ``validate``; without it, a world with a NaN action steps with zero controls and ends
            diverged (reward 0, truncated, reset).
          validate: read one flag back to check for NaN actions and earlier capacity overflow.
          readouts: also report what the step read, before its auto-reset (copies, for tests and
            diagnostics; off the training path): ``ctrl`` [W, nu] the controls applied, and the task's
            own (HumanoidBench: ``reward_inputs``, the ``rewards.RewardInputs`` fields by name).

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
        if readouts:
            info.update(self._readouts(), ctrl=self._ctrl.clone())
        self._reset_worlds(done)
        return torch.where(done[:, None], self.observation(), obs), reward, terminated, truncated, info
