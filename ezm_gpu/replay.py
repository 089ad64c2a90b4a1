"""EZ-M's replay: one prioritised ring buffer per task, on the device, sampled in fixed shapes.

Layout
------
Every task owns a ring of ``capacity`` *rows*; all rings live in one set of ``[num_tasks, capacity, ...]``
tensors so a batch over all tasks is one set of vectorised ops, never a Python loop over tasks. A row
is either

* a **transition** ``(o_t, a_t, r_t)`` of one world, or
* a **final observation**: the observation after the last action of an episode (before the reset).
  Episodes end by the time limit (EZ-M ignores terminations), so that observation is a real state
  that the last steps' value targets and consistency loss need, yet the next ``add`` of the world
  already brings the reset observation. Storing it as one extra row per finished episode costs
  1/500 of the ring instead of a ``next_obs`` copy of every transition (which would double the
  largest tensor). Final-observation rows have priority 0 and are never sampled as a start.

Every row of a task gets an absolute **stamp** (0, 1, 2, ... in order of writing, never reused); it
lives at slot ``stamp % capacity`` until overwritten. Trajectories of different worlds interleave in
their task's ring, so each row stores ``next``: the stamp of the same world's next row in the same
episode (-1 while not yet written, and after an episode's final observation). A window follows these
links, which is why it follows exactly one world's trajectory and never crosses an episode end,
whatever order or subset of worlds ``add`` is given. The link is written into the predecessor row
when the successor arrives (``add`` keeps each world's newest open stamp). A successor always has a
larger stamp than its predecessor, so a window that starts inside the live range can never reach an
overwritten row; each hop also checks the stored stamp, so a stale link reads as "end of data".

Why links rather than one sub-ring per world (or a fixed stride of worlds-per-task): sub-rings would
fix the worlds-per-task split at construction and make "the task's most recent N transitions" a
per-world notion; a fixed stride breaks as soon as a step does not carry every world in the same
order. The links cost one int64 per row (~1% of a 177-dim observation row) and K + TD dependent
gathers of ``[B]`` indices per batch.

A row can start a sample only once its whole **window** exists: the L = K + n transitions after it and
the observation after them, or its episode's end within them. Targets of a window that reaches past
the world's newest data would bootstrap from observations that have not happened yet (the release
never trains on such a window: it stores a block only once it is padded with the next steps). Each
row has a ``ready`` flag, False when written; ``add`` keeps every world's last L open transitions
(``world_recent``) and sets the oldest one ready when the world's next transition arrives, or all of
them when its episode ends. A world's newest L transitions are therefore never sampled; their
priority is stored all the same and counts once they are ready.

Sampling is the inverse CDF: a float64 cumulative sum of ``priority**alpha`` over the task's recency
window, ``torch.searchsorted`` of uniform draws from the caller's generator; with replacement (the
release samples without replacement; at 1e6 rows and ~100 draws per task duplicates are rare).
Nothing in :meth:`ReplayBuffer.sample` reads back to the host, so it can sit inside a CUDA graph.

Global indices (what :meth:`ReplayBuffer.sample` returns and :meth:`ReplayBuffer.update_priorities`
takes) are ``task * capacity + slot``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch

from . import rng
from .envs.device import canonical_device, check_device

__all__ = ["ReplayConfig", "ReplayBatch", "ReplayBuffer", "storage_layout", "storage_bytes"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """Replay hyper-parameters (defaults are EZ-M's release, spec ezm.md "Replay and targets")."""

    num_tasks: int  # T: one ring per task; a batch takes batch_size // T samples from each
    capacity: int  # rows per task: transitions + one final-observation row per finished episode
    obs_dim: int  # padded observation size of the task set (hard set: 177)
    action_dim: int  # padded action size of the task set (hard set: 61)
    num_worlds: int  # parallel worlds whose trajectories are linked; world ids lie in [0, num_worlds)
    batch_size: int = 512  # B: samples per batch over all tasks (1024 for the hard set)
    unroll_steps: int = 5  # K: model unroll; a sample's first K+1 observations are o_t ... o_{t+K}
    td_steps: int = 5  # n of the n-step value target z_{t+k} (needs o_{t+k+n} and r_{t+k} ... r_{t+k+n-1})
    alpha: float = 1.0  # P(i) proportional to p_i ** alpha within the task
    beta: float = 1.0  # importance weight (N P(i)) ** -beta, before normalisation
    min_weight: float = 0.1  # importance weights are clipped to [min_weight, 1] after normalisation
    recency: int = 1_000_000  # only a task's newest `recency` rows can start a sample
    initial_priority: float = 1.0  # priority of a task's first data (the release's value for an empty buffer)

    def __post_init__(self):
        for name in ("num_tasks", "capacity", "obs_dim", "action_dim", "num_worlds", "batch_size",
                     "unroll_steps", "td_steps", "recency"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ReplayConfig.{name} must be an integer >= 1, got {value!r}")
        if self.batch_size < self.num_tasks or self.batch_size % self.num_tasks:
            raise ValueError(f"ReplayConfig.batch_size ({self.batch_size}) must be a multiple of num_tasks "
                             f"({self.num_tasks}) and >= it: every task gets an equal slice of the batch")
        for name in ("alpha", "beta", "min_weight", "initial_priority"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"ReplayConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.min_weight > 1:
            raise ValueError(f"ReplayConfig.min_weight must lie in [0, 1], got {self.min_weight!r}")
        if self.initial_priority <= 0:
            raise ValueError(f"ReplayConfig.initial_priority must be > 0, got {self.initial_priority!r}")

    @property
    def samples_per_task(self) -> int:
        """batch_size // num_tasks."""
        return self.batch_size // self.num_tasks

    @property
    def window(self) -> int:
        """L = unroll_steps + td_steps: transitions a sample spans (it has L + 1 observations)."""
        return self.unroll_steps + self.td_steps


@dataclasses.dataclass
class ReplayBatch:
    """One batch, task-major: rows ``[i*S, (i+1)*S)`` are task i's slice (S = batch_size // num_tasks).

    With L = K + TD, position j of a window is time t + j of one world's episode. Masked positions are
    padding: observations repeat the last valid one, actions and rewards are 0.

    Fields:
      task_ids: [B] int64 task of each sample.
      indices: [B] int64 global row index (task * capacity + slot) of o_t, for update_priorities.
      stamps: [B] int64 absolute row number of o_t in its task (-1 for an invalid sample); pass it to
        update_priorities to skip rows overwritten since sampling.
      age: [B] int64 rows written to the task after o_t (0 = the newest row); for the "mixed" target.
      weights: [B] float32 importance weights in [min_weight, 1] (0 for an invalid sample).
      obs: [B, L+1, obs_dim] float32 o_t ... o_{t+L}.
      actions: [B, L, action_dim] float32 a_t ... a_{t+L-1}.
      rewards: [B, L] float32 r_t ... r_{t+L-1} (reward of a_{t+j}).
      obs_mask: [B, L+1] bool, o_{t+j} is a stored observation of the same episode (the final
        observation of an episode counts).
      step_mask: [B, L] bool, a_{t+j} / r_{t+j} were taken in the episode (step j is not past its end;
        a window never reaches past the newest stored data). step_mask[:, 0] marks valid samples.
      terminal: [B, L+1] bool, o_{t+j} is the final observation of a *terminated* episode (absorbing,
        value 0); always False under EZ-M's protocol, which only truncates.
    """

    task_ids: torch.Tensor
    indices: torch.Tensor
    stamps: torch.Tensor
    age: torch.Tensor
    weights: torch.Tensor
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    obs_mask: torch.Tensor
    step_mask: torch.Tensor
    terminal: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """[B] bool: the sample is a stored transition (False only while its task holds no data)."""
        return self.step_mask[:, 0]


def storage_layout(config: ReplayConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype, float]]:
    """The buffer's storage, name -> (shape, dtype, initial value); rows = T * C + 1, the last a sink:
    writes that must not land anywhere go there (fixed shapes, no host sync)."""
    rows, worlds = config.num_tasks * config.capacity + 1, config.num_worlds
    return {
        "obs": ((rows, config.obs_dim), torch.float32, 0.0),
        "action": ((rows, config.action_dim), torch.float32, 0.0),
        "reward": ((rows,), torch.float32, 0.0),
        "priority": ((rows,), torch.float32, 0.0),
        "stamp": ((rows,), torch.int64, -1),  # -1: never written
        "next": ((rows,), torch.int64, -1),  # stamp of the world's next row
        "is_step": ((rows,), torch.bool, False),  # transition (vs final observation)
        "terminal": ((rows,), torch.bool, False),  # final obs of a terminated episode
        "ready": ((rows,), torch.bool, False),  # the row's whole window is stored
        "count": ((config.num_tasks,), torch.int64, 0),  # rows ever written per task
        "world_last": ((worlds,), torch.int64, -1),  # open stamp
        "world_task": ((worlds,), torch.int64, -1),
        # Each world's last L transitions of its open episode, oldest first (-1: none), not yet ready.
        "world_recent": ((worlds, config.window), torch.int64, -1),
    }


_ROW_STORAGE = ("obs", "action", "reward", "priority", "stamp", "next", "is_step", "terminal", "ready")  # [T*C+1, ...]


def storage_bytes(config: ReplayConfig) -> int:
    """Bytes ``ReplayBuffer(config)`` allocates on its device, computed without allocating."""
    return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size()
               for shape, dtype, _ in storage_layout(config).values())


class ReplayBuffer:
    """Per-task prioritised ring buffers on one device (see the module docstring for the layout).

    Usage per env step of W worlds (``envs.TaskSet``): ``add(task_ids, obs, action, reward, done,
    info["final_observation"], terminated)`` where ``obs`` is the observation the action was chosen
    in. Per update: ``batch = sample(generator)``, then ``update_priorities(batch.indices, p,
    batch.stamps)``.
    """

    def __init__(self, config: ReplayConfig, device: Optional[torch.device | str] = None,
                 shared_max: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        """``shared_max``: for a shard of a data-parallel replay, [T] -> [T] the maximum over every shard (a
        collective, ``ezm_gpu.distributed``): new transitions then get their task's maximum stored priority over
        the whole replay, as one buffer would give them. None: this buffer is the whole replay."""
        if not isinstance(config, ReplayConfig):
            raise TypeError(f"config must be a ReplayConfig, got {type(config).__name__}")
        self.config, self._shared_max = config, shared_max
        # (canonical: compares equal to its tensors' device; "meta" holds shapes only: ezm_gpu.opcount)
        self.device = canonical_device("cpu" if device is None else device, allow_meta=True)
        self._sink = config.num_tasks * config.capacity  # the storage's last row (storage_layout)
        for name, (shape, dtype, fill) in storage_layout(config).items():
            setattr(self, f"_{name}", torch.full(shape, fill, dtype=dtype, device=self.device))

    # ------------------------------------------------------------------ views and introspection

    def _tc(self, flat: torch.Tensor) -> torch.Tensor:
        """[T*C+1, ...] storage -> [T, C, ...] view without the sink row."""
        T, C = self.config.num_tasks, self.config.capacity
        return flat[: T * C].view(T, C, *flat.shape[1:])

    def size(self) -> torch.Tensor:
        """[T] int64 rows currently stored per task (transitions + final observations), on device."""
        return self._count.clamp_max(self.config.capacity)

    def num_added(self) -> torch.Tensor:
        """[T] int64 rows ever written per task (the next row's stamp), on device."""
        return self._count.clone()

    def priorities(self) -> torch.Tensor:
        """[T, capacity] float32 stored priorities by slot (0 for empty slots and final observations)."""
        return self._tc(self._priority).clone()

    def memory_bytes(self) -> int:
        """Bytes allocated on the device by the buffer's storage (excludes transient sampling buffers)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict()["tensors"].values())

    def memory_summary(self) -> str:
        """One line: tasks, capacity and allocated memory, e.g. for the training log."""
        c = self.config
        return (f"replay: {c.num_tasks} tasks x {c.capacity:,} rows (obs {c.obs_dim}, action {c.action_dim}) = "
                f"{self.memory_bytes() / 2**20:,.1f} MiB on {self.device}")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """{"config": the ReplayConfig as a dict, "tensors": every storage tensor by name}, for checkpoints.

        The tensors are the live storage (no copy, which would double the buffer's memory): serialise the
        dict (``checkpoint.save_checkpoint``) before the next ``add`` or ``update_priorities``. A buffer
        restored with ``load_state_dict`` samples exactly like this one for the same generator state.
        """
        return {"config": dataclasses.asdict(self.config),
                "tensors": {name: getattr(self, f"_{name}") for name in storage_layout(self.config)}}

    def checkpoint_state(self) -> dict:
        """Like ``state_dict()``, but the per-row storage holds only the rows written so far, on the host:
        {"config", "filled": [T] rows kept per task (slots 0..filled-1), "rows": {name: [sum(filled), ...]},
        "tensors": the per-task and per-world state}. A checkpoint of a run that filled 3k rows of a 1M-row
        buffer is then 3k rows, not 1M. Reads the fill counts back to the host (a checkpoint, not the hot loop).
        """
        filled = self.size().tolist()
        rows, per_world = {}, {}
        for name in storage_layout(self.config):
            storage = getattr(self, f"_{name}")
            if name in _ROW_STORAGE:
                rows[name] = torch.cat([self._tc(storage)[t, :count].to("cpu") for t, count in enumerate(filled)])
            else:
                per_world[name] = storage
        return {"config": dataclasses.asdict(self.config), "filled": filled, "rows": rows, "tensors": per_world}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Copies ``state_dict()``'s or ``checkpoint_state()``'s output into this buffer's storage (on this
        buffer's device); rows a checkpoint state does not hold are empty, as in a new buffer.

        The configs must match (a different capacity or task count would reinterpret every slot).
        """
        if isinstance(state, dict) and "filled" in state:
            state = self._expand(state)
        saved = state.get("config") if isinstance(state, dict) else None
        if not isinstance(saved, dict) or not isinstance(state.get("tensors"), dict):
            raise ValueError("replay state must be ReplayBuffer.state_dict()'s output ({'config', 'tensors'})")
        ours = dataclasses.asdict(self.config)
        diff = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
        if diff:
            raise ValueError("replay state was saved with a different ReplayConfig (field: (saved, this buffer)): "
                             + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
                             + "; build the buffer with the saved config")
        targets = self.state_dict()["tensors"]
        if "ready" not in state["tensors"]:
            raise ValueError("replay state was saved before windows were tracked (no 'ready' rows): it cannot tell "
                             "which rows have their whole window stored; start the run with an empty replay")
        for name, target in targets.items():
            source = state["tensors"].get(name)
            if not isinstance(source, torch.Tensor) or source.shape != target.shape or source.dtype != target.dtype:
                raise ValueError(f"replay state tensor {name!r} must be {target.dtype} {list(target.shape)}, got "
                                 + (f"{source.dtype} {list(source.shape)}" if isinstance(source, torch.Tensor)
                                    else type(source).__name__))
        for name, target in targets.items():  # all checked first: a failed load leaves the buffer as it was
            target.copy_(state["tensors"][name])

    def _expand(self, state: dict) -> dict:
        """``checkpoint_state()``'s output as ``state_dict()``'s: full storage with the kept rows in place."""
        filled, rows = state["filled"], state.get("rows", {})
        if len(filled) != self.config.num_tasks or any(not 0 <= f <= self.config.capacity for f in filled):
            raise ValueError(f"replay checkpoint state keeps {filled} rows per task; this buffer has "
                             f"{self.config.num_tasks} tasks of {self.config.capacity} rows")
        full = dict(state.get("tensors", {}))
        for name, (shape, dtype, fill) in storage_layout(self.config).items():
            if name not in _ROW_STORAGE:
                continue
            kept = rows.get(name)
            if not isinstance(kept, torch.Tensor) or kept.shape[0] != sum(filled):
                raise ValueError(f"replay checkpoint state's {name!r} must hold {sum(filled)} rows")
            storage = torch.full(shape, fill, dtype=kept.dtype)
            for t, part in enumerate(torch.split(kept, filled)):
                self._tc(storage)[t, :filled[t]] = part
            full[name] = storage
        return {"config": state["config"], "tensors": full}

    # ------------------------------------------------------------------ insertion

    def _check(self, name: str, x, shape: tuple, kind: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
        ok = {"int": not x.dtype.is_floating_point and not x.dtype.is_complex and x.dtype != torch.bool,
              "float": x.dtype.is_floating_point, "bool": x.dtype == torch.bool}[kind]
        if not ok:
            wanted = {"int": "an integer", "float": "a floating-point", "bool": "a bool"}[kind]
            raise TypeError(f"{name} must have {wanted} dtype, got {x.dtype}")
        check_device(x, self.device, name, "buffer")
        return x.detach()

    @torch.no_grad()
    def add(self, task_ids: torch.Tensor, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
            done: torch.Tensor, next_obs: torch.Tensor, terminated: Optional[torch.Tensor] = None,
            world_ids: Optional[torch.Tensor] = None, validate: bool = True) -> None:
        """Stores one env step of W worlds.

        Args:
          task_ids: [W] integer task of each world, in [0, num_tasks).
          obs: [W, obs_dim] float observation o_t the action was chosen in (zero-padded to obs_dim).
          action: [W, action_dim] float action a_t taken (padded dims as given, normally 0).
          reward: [W] float reward r_t of a_t (env units, undiscounted).
          done: [W] bool, a_t ended the world's episode (terminated or truncated); the world's next
            ``add`` starts a new episode.
          next_obs: [W, obs_dim] float observation after a_t before any reset (``info["final_observation"]``);
            only read where ``done`` (elsewhere the next ``add``'s ``obs`` is that observation).
          terminated: [W] bool or None (all False), the episode ended in an absorbing state (value 0);
            must imply ``done``. EZ-M ignores terminations, so it is normally None.
          world_ids: [W] integer distinct world ids in [0, num_worlds), or None for ``arange(W)``. A world
            keeps its id across calls; its consecutive transitions are linked into one trajectory.
          validate: check values (ranges, uniqueness, finiteness, per-task row count); reads back to the
            host. Shapes, dtypes and devices are always checked (no read-back).

        New transitions get their task's current maximum stored priority (``initial_priority`` while
        the task is empty); final observations get 0. A transition can be sampled once its window is
        stored (module docstring: ``ready``).
        """
        c = self.config
        if not isinstance(task_ids, torch.Tensor) or task_ids.dim() != 1 or task_ids.shape[0] < 1:
            raise ValueError(f"task_ids must be a non-empty 1-D tensor [W], got "
                             f"{list(task_ids.shape) if isinstance(task_ids, torch.Tensor) else type(task_ids).__name__}")
        W = task_ids.shape[0]
        if W > c.num_worlds:
            raise ValueError(f"{W} worlds given, ReplayConfig.num_worlds is {c.num_worlds}")
        task_ids = self._check("task_ids", task_ids, (W,), "int").long()
        obs = self._check("obs", obs, (W, c.obs_dim), "float")
        action = self._check("action", action, (W, c.action_dim), "float")
        reward = self._check("reward", reward, (W,), "float")
        done = self._check("done", done, (W,), "bool")
        next_obs = self._check("next_obs", next_obs, (W, c.obs_dim), "float")
        if terminated is None:
            terminated = torch.zeros_like(done)
        terminated = self._check("terminated", terminated, (W,), "bool")
        if world_ids is None:
            world_ids = torch.arange(W, device=self.device)
        world_ids = self._check("world_ids", world_ids, (W,), "int").long()
        if validate:
            self._validate_add(task_ids, obs, action, reward, done, next_obs, terminated, world_ids)

        T, C = c.num_tasks, c.capacity
        # 2W candidate rows: W transitions, then W final observations of which only the `done` ones exist.
        row_task = torch.cat([task_ids, task_ids])
        active = torch.cat([torch.ones_like(done), done])
        # (a comparison, not F.one_hot: on the CPU one_hot reads the ids' range back to check it)
        onehot = (row_task[:, None] == torch.arange(T, device=self.device)).long() * active[:, None]  # [2W, T]
        rank = onehot.cumsum(0).gather(1, row_task[:, None]).squeeze(1) - 1  # order within the task's rows
        stamp = self._count[row_task] + rank  # [2W]
        flat = torch.where(active, row_task * C + stamp.remainder(C), self._sink)

        # The task's max over stored priorities, read before this step overwrites anything (as released).
        max_p = self._tc(self._priority).amax(1)
        max_p = max_p if self._shared_max is None else self._shared_max(max_p)
        max_p = torch.where(max_p > 0, max_p, torch.full_like(max_p, c.initial_priority))

        step_stamp, final_stamp = stamp[:W], stamp[W:]
        self._obs[flat] = torch.cat([obs, next_obs]).float()
        self._action[flat] = torch.cat([action.float(), torch.zeros_like(action, dtype=torch.float32)])
        self._reward[flat] = torch.cat([reward.float(), torch.zeros_like(reward, dtype=torch.float32)])
        self._priority[flat] = torch.cat([max_p[task_ids], torch.zeros_like(max_p[task_ids])])
        self._stamp[flat] = stamp
        self._next[flat] = torch.cat([torch.where(done, final_stamp, -1), torch.full_like(final_stamp, -1)])
        self._is_step[flat] = torch.cat([torch.ones_like(done), torch.zeros_like(done)])
        self._terminal[flat] = torch.cat([torch.zeros_like(done), terminated])
        self._ready[flat] = False
        self._count += onehot.sum(0)

        # Link each world's previous open transition (same task, still stored) to its new one.
        prev = self._world_last[world_ids]
        prev_flat = task_ids * C + prev.remainder(C)
        linkable = (prev >= 0) & (self._world_task[world_ids] == task_ids) & (self._stamp[prev_flat] == prev)
        self._next[torch.where(linkable, prev_flat, self._sink)] = step_stamp
        self._world_last[world_ids] = torch.where(done, -1, step_stamp)
        self._world_task[world_ids] = task_ids

        # Windows completed by this step: the world's transition L steps back now has its o_{t+L} (this
        # row's obs); where the episode ended, every open transition's window reaches the final observation.
        # A world that starts an episode (or changes task) leaves its previous open rows unready for good.
        recent = torch.where(linkable[:, None], self._world_recent[world_ids], -1)  # [W, L]
        recent = torch.cat([recent, step_stamp[:, None]], 1)  # [W, L+1], this step's row last
        completed = torch.cat([recent[:, :1] >= 0, done[:, None].expand(-1, c.window)], 1) & (recent >= 0)
        rows = task_ids[:, None] * C + recent.remainder(C)
        completed &= self._stamp[rows] == recent  # still stored
        self._ready[torch.where(completed, rows, self._sink)] = True
        self._world_recent[world_ids] = torch.where(done[:, None], -1, recent[:, 1:])

    def _validate_add(self, task_ids, obs, action, reward, done, next_obs, terminated, world_ids) -> None:
        c = self.config
        if bool(((task_ids < 0) | (task_ids >= c.num_tasks)).any()):
            raise ValueError(f"task_ids must lie in [0, {c.num_tasks}), got values {sorted(set(task_ids.tolist()))}")
        if bool(((world_ids < 0) | (world_ids >= c.num_worlds)).any()):
            raise ValueError(f"world_ids must lie in [0, {c.num_worlds})")
        if world_ids.unique().numel() != world_ids.numel():
            raise ValueError("world_ids must be distinct within one add (one transition per world per step)")
        if bool((terminated & ~done).any()):
            raise ValueError("terminated must imply done")
        for name, x in (("obs", obs), ("action", action), ("reward", reward)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} holds non-finite values")
        if not bool(torch.isfinite(next_obs[done]).all()):
            raise ValueError("next_obs holds non-finite values where done")
        rows = torch.bincount(task_ids, minlength=c.num_tasks) + torch.bincount(task_ids[done], minlength=c.num_tasks)
        if bool((rows > c.capacity).any()):
            raise ValueError(f"one add writes up to {int(rows.max())} rows to a task, more than capacity "
                             f"{c.capacity}: the step would overwrite itself")

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, generator: Optional[torch.Generator] = None) -> ReplayBatch:
        """Draws ``batch_size // num_tasks`` windows from every task; no host synchronisation.

        Within task i, a start row j of the task's newest ``min(recency, capacity)`` rows is drawn with
        P(j) = p_j**alpha / sum_window p**alpha (final-observation rows have p = 0), and weighted by
        w_j = (N P(j))**-beta / max over task i's drawn samples, clipped to [min_weight, 1], N = the
        number of transitions in the window (as released: normalised by the max of the task's slice).
        A task without data yields invalid samples (``valid`` False, weight 0, every mask False).

        Args:
          generator: torch.Generator on the buffer's device, or None for the global generator.
        Returns:
          ReplayBatch with B = batch_size, L = unroll_steps + td_steps (shapes in its docstring).
        """
        c = self.config
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device}, the buffer on {self.device}")
        T, C, S, L = c.num_tasks, c.capacity, c.samples_per_task, c.window
        dev = self.device

        stamp_tc = self._tc(self._stamp)
        lo = (self._count - min(c.recency, C)).clamp_min(0)  # oldest sampleable stamp per task
        # Empty slots have stamp -1 < lo; a row whose window is not stored yet is not ready.
        eligible = self._tc(self._is_step) & self._tc(self._ready) & (stamp_tc >= lo[:, None])
        weight = torch.where(eligible, self._tc(self._priority).double().pow(c.alpha), 0.0)  # [T, C]
        # float64: a float32 running sum over 1e6 rows loses the small priorities' share entirely.
        cdf = weight.cumsum(1)
        total = cdf[:, -1:]  # [T, 1]
        u = rng.uniform((T, S), generator, dev, torch.float64) * total
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # keeps u < total after rounding
        # right=True returns the first slot with cdf > u, so a zero-weight slot can never be picked.
        slot = torch.searchsorted(cdf, u, right=True).clamp_max(C - 1)  # [T, S]
        w_sel = weight.gather(1, slot)
        valid = w_sel > 0
        prob = w_sel / total.clamp_min(torch.finfo(torch.float64).tiny)
        n_window = eligible.sum(1, keepdim=True).double()
        isw = torch.where(valid, (n_window * prob).pow(-c.beta), 0.0)
        isw = isw / isw.amax(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        isw = torch.where(valid, isw.clamp(c.min_weight, 1.0), 0.0)

        task = torch.arange(T, device=dev).repeat_interleave(S)  # [B]
        base = task * C
        cur = base + slot.reshape(-1)
        alive = valid.reshape(-1)
        start_stamp = torch.where(alive, self._stamp[cur], -1)
        age = torch.where(alive, self._count[task] - 1 - start_stamp, 0)

        obs, obs_mask, terminal, actions, rewards, step_mask = [self._obs[cur]], [alive], [], [], [], []
        terminal.append(alive & self._terminal[cur])
        for _ in range(L):
            step = alive & self._is_step[cur]
            step_mask.append(step)
            actions.append(torch.where(step[:, None], self._action[cur], 0.0))
            rewards.append(torch.where(step, self._reward[cur], 0.0))
            nxt = self._next[cur]
            nxt_flat = base + nxt.remainder(C)
            alive = step & (nxt >= 0) & (self._stamp[nxt_flat] == nxt)
            cur = torch.where(alive, nxt_flat, cur)  # a dead window stays put: padding repeats the last obs
            obs.append(self._obs[cur])
            obs_mask.append(alive)
            terminal.append(alive & self._terminal[cur])

        return ReplayBatch(
            task_ids=task, indices=base + slot.reshape(-1), stamps=start_stamp, age=age,
            weights=isw.reshape(-1).float(), obs=torch.stack(obs, 1), actions=torch.stack(actions, 1),
            rewards=torch.stack(rewards, 1), obs_mask=torch.stack(obs_mask, 1),
            step_mask=torch.stack(step_mask, 1), terminal=torch.stack(terminal, 1))

    # ------------------------------------------------------------------ priorities

    @torch.no_grad()
    def update_priorities(self, indices: torch.Tensor, priorities: torch.Tensor,
                          stamps: Optional[torch.Tensor] = None, validate: bool = False) -> None:
        """Stores new priorities, e.g. ``|mean_heads(V(o_t)) - z_t| + 1e-6`` computed by the caller.

        Args:
          indices: [M] integer global row indices (``ReplayBatch.indices``).
          priorities: [M] float priorities, stored as given (must be >= 0; 0 means never sampled again).
          stamps: [M] int64 or None; when given (``ReplayBatch.stamps``) a row is only updated if it still
            holds that transition, so late updates never touch data written after sampling.
          validate: check ranges and values (reads back to the host).

        Rows that hold no transition (empty, final observation, invalid samples) are left alone. An index
        repeated in one call (sampling with replacement) stores the largest of its priorities: a defined
        result on every device (an indexed assignment lets an unspecified duplicate win on CUDA), and
        order-independent, so a resumed run stores the same value.
        """
        if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
            raise ValueError("indices must be a 1-D tensor [M]")
        M = indices.shape[0]
        indices = self._check("indices", indices, (M,), "int").long()
        priorities = self._check("priorities", priorities, (M,), "float")
        if stamps is not None:
            stamps = self._check("stamps", stamps, (M,), "int").long()
        if validate:
            if bool(((indices < 0) | (indices >= self._sink)).any()):
                raise ValueError(f"indices must lie in [0, num_tasks * capacity) = [0, {self._sink})")
            if not bool((torch.isfinite(priorities) & (priorities >= 0)).all()):
                raise ValueError("priorities must be finite and >= 0")
        idx = indices.clamp(0, self._sink)
        ok = (self._stamp[idx] >= 0) & self._is_step[idx] & (indices >= 0) & (indices < self._sink)
        if stamps is not None:
            ok &= self._stamp[idx] == stamps
        self._priority.scatter_reduce_(0, torch.where(ok, idx, self._sink), priorities.float(), reduce="amax",
                                       include_self=False)
