"""Several tasks as one batch: worlds split across tasks, padded observations, masks."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .device import DeviceLike
from .env import make
from .registry import SUCCESS_BARS, TASK_SETS, parse_task_id, success_bar

__all__ = ["TASK_SETS", "SUCCESS_BARS", "success_bar", "TaskSet", "make_set"]  # the sets and bars: registry's


class TaskSet:
    """``num_envs`` worlds over several tasks, one MuJoCo-Warp model per task.

    Worlds are contiguous per task (task i owns rows ``slices[i]``). Observations are zero-padded to
    the largest task's size, actions are given at the largest action size and each task reads its
    first ``action_dim`` entries (``action_mask`` marks them).

    Attributes:
      tasks: task ids in order; envs: one env per task (``make``); slices: their world ranges;
      task_ids: [W] int64 task index per world; action_mask: [W, A] bool; obs_dim, action_dim (padded).
    """

    def __init__(self, tasks: Sequence[str], num_envs: int, device: DeviceLike = None, seed: int = 0,
                 **env_kwargs):
        tasks = [str(parse_task_id(task)) for task in tasks]
        if not tasks:
            raise ValueError("a task set needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks repeat in {tasks}")
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < len(tasks):
            raise ValueError(f"num_envs must be an integer >= the number of tasks ({len(tasks)}), got {num_envs!r}")
        share, extra = divmod(num_envs, len(tasks))
        counts = [share + (i < extra) for i in range(len(tasks))]
        self.tasks = tasks
        self.envs = [make(task, count, device=device, seed=seed * 1000 + i, **env_kwargs)
                     for i, (task, count) in enumerate(zip(tasks, counts))]
        starts = [sum(counts[:i]) for i in range(len(counts))]
        self.slices = [slice(start, start + count) for start, count in zip(starts, counts)]
        self.num_envs = num_envs
        self.device = self.envs[0].device
        self.obs_dim = max(env.obs_dim for env in self.envs)
        self.action_dim = max(env.action_dim for env in self.envs)
        self.task_ids = torch.cat([torch.full((count,), i, dtype=torch.int64, device=self.device)
                                   for i, count in enumerate(counts)])
        dims = torch.tensor([env.action_dim for env in self.envs], device=self.device)
        self.action_mask = torch.arange(self.action_dim, device=self.device) < dims[self.task_ids][:, None]

    def _pad(self, parts: list) -> torch.Tensor:
        return torch.cat([torch.cat([p, p.new_zeros(p.shape[0], self.obs_dim - p.shape[1])], 1) for p in parts])

    def reset(self, stagger: bool = False, stagger_multiple: int = 1) -> torch.Tensor:
        """Resets every world; returns padded observations [W, obs_dim].

        stagger: each task's env draws its worlds' first-episode time-limit credit (see
        ``BatchedEnv.reset``) from its own seed, so first episodes end uniformly over 1..time_limit
        steps of that task rather than in one synchronised wave; stagger_multiple: the credit is a
        multiple of it (an agent's action repeat).
        """
        return self._pad([env.reset(stagger=stagger, stagger_multiple=stagger_multiple) for env in self.envs])

    def step(self, action: torch.Tensor, validate: bool = True):
        """Steps every task. action [W, action_dim] (padding entries ignored).

        Returns obs [W, obs_dim], reward [W], terminated [W], truncated [W] and info with the common
        per-world entries (``final_observation`` padded, ``episode_return``, ``episode_length``,
        ``done``, ``diverged``) and ``terms``: one dict of reward terms per task, in task order.
        """
        if tuple(action.shape) != (self.num_envs, self.action_dim):
            raise ValueError(f"action must have shape [{self.num_envs}, {self.action_dim}], got {list(action.shape)}")
        results = [env.step(action[rows, :env.action_dim], validate) for env, rows in zip(self.envs, self.slices)]
        obs, reward, terminated, truncated, infos = zip(*results)
        common = ("episode_return", "episode_length", "done", "diverged")
        info = {key: torch.cat([i[key] for i in infos]) for key in common}
        info["final_observation"] = self._pad([i["final_observation"] for i in infos])
        info["terms"] = [{k: v for k, v in i.items() if k not in common + ("final_observation",)} for i in infos]
        return self._pad(list(obs)), torch.cat(reward), torch.cat(terminated), torch.cat(truncated), info

    def set_time_limit(self, steps: int, task: Optional[int] = None) -> None:
        """Changes the episode length of every task, or of task index ``task`` only (EZ-M's curriculum:
        500, then 1000). Episodes under way keep running and end at the new limit (counting a
        staggered first episode's ``start_elapsed`` credit, as before the change)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"time limit must be an integer >= 1, got {steps!r}")
        if task is not None and not 0 <= task < len(self.envs):
            raise ValueError(f"task index must lie in [0, {len(self.envs)}), got {task!r}")
        for index, env in enumerate(self.envs):
            if task is None or index == task:
                env.time_limit = steps

    @property
    def time_limits(self) -> list[int]:
        """Each task's current episode length."""
        return [env.time_limit for env in self.envs]

    def state_dict(self) -> dict:
        """Per-task env states (see ``BatchedEnv.state_dict``)."""
        return {"tasks": list(self.tasks), "envs": [env.state_dict() for env in self.envs]}

    def load_state_dict(self, state: dict) -> None:
        if state["tasks"] != self.tasks:
            raise ValueError(f"state of tasks {state['tasks']} cannot load into {self.tasks}")
        for env, env_state in zip(self.envs, state["envs"]):
            env.load_state_dict(env_state)

    def check(self) -> None:
        """Raises if any task's physics overflowed its capacity (see BatchedEnv.check)."""
        for env in self.envs:
            env.check()


def make_set(tasks: Union[str, Sequence[str]], num_envs: int, device: DeviceLike = None, seed: int = 0,
             **env_kwargs) -> TaskSet:
    """A TaskSet from a set name ("medium", "hard", "cartpole") or a list of task ids."""
    if isinstance(tasks, str):
        if tasks not in TASK_SETS:
            raise ValueError(f"unknown task set {tasks!r}; known sets: {', '.join(TASK_SETS)} (or pass a list of ids)")
        tasks = TASK_SETS[tasks]
    return TaskSet(tasks, num_envs, device=device, seed=seed, **env_kwargs)
