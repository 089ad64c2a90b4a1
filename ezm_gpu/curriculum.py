"""The release's episode-length curriculum: training episodes of ``episode_length`` steps, 1000 once the run
is 40% through its decisions, or earlier for a task whose last 10 training returns have saturated."""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["SATURATION_WINDOW", "push_recent_returns", "saturated_tasks", "Curriculum"]

SATURATION_WINDOW = 10  # the release's curriculum looks at each task's last 10 training returns


def push_recent_returns(recent: torch.Tensor, recent_count: torch.Tensor, task_ids: torch.Tensor,
                        done: torch.Tensor, episode_return: torch.Tensor) -> None:
    """Appends finished episodes' returns to per-task rings, in place and on device (no host read).

    recent [T, R] ring of each task's last R returns (slot ``count % R`` is next); recent_count [T] int64
    returns pushed so far; task_ids [W] (worlds grouped by task, as in a TaskSet); done [W] bool;
    episode_return [W]. When more than R worlds of a task finish at once, its last R (by world) are kept.
    """
    tasks, window = recent.shape
    done = done.bool()
    one_hot = (task_ids.long()[:, None] == torch.arange(tasks, device=done.device)) & done[:, None]  # [W, T]
    rank = (one_hot.long().cumsum(0) - 1).gather(1, task_ids.long()[:, None])[:, 0]  # among the task's done
    finished = one_hot.sum(0)  # [T]
    keep = done & (rank >= finished[task_ids.long()] - window)
    slot = (recent_count[task_ids.long()] + rank) % window
    flat = torch.where(keep, task_ids.long() * window + slot, tasks * window)  # dropped rows -> a spare slot
    spare = torch.cat([recent.reshape(-1), recent.new_zeros(1)])
    spare.scatter_(0, flat, torch.where(keep, episode_return.to(recent.dtype), 0.0))
    recent.copy_(spare[:-1].view(tasks, window))
    recent_count.add_(finished)


def saturated_tasks(recent: torch.Tensor, recent_count: torch.Tensor) -> torch.Tensor:
    """[T] bool: the tasks whose last R returns have saturated (release: ``max - min < 0.1 max`` and ``min > 60``)."""
    full = recent_count >= recent.shape[1]
    high, low = recent.amax(1), recent.amin(1)
    return full & (high - low < 0.1 * high) & (low > 60)


class Curriculum:
    """Per-task rings of the last finished returns (on the device) and the two switches to 1000-step episodes."""

    def __init__(self, world, episode_length: int, decisions: int):
        self.world, self.episode_length = world, episode_length
        self.switch_at = int(0.4 * decisions)  # decision at which every task goes to 1000-step episodes
        tasks, device = len(world.tasks), world.task_ids.device
        self.recent = torch.zeros(tasks, SATURATION_WINDOW, device=device)  # [T, R] last finished returns
        self.recent_count = torch.zeros(tasks, dtype=torch.long, device=device)  # [T] returns pushed so far

    def record(self, finished: torch.Tensor, episode_return: torch.Tensor, decisions: int) -> None:
        """After a decision: finished [W] bool full episodes and their returns [W]; ``decisions`` taken so far."""
        push_recent_returns(self.recent, self.recent_count, self.world.task_ids, finished, episode_return)
        if decisions == self.switch_at:
            self.world.set_time_limit(max(self.episode_length, 1000))

    def switch_saturated(self, agree: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """The release's early switch for saturated tasks (reads the rings: call it where a log row is written).

        ``agree``: [T] int (1 = saturated here) -> [T], the same on every data-parallel rank (the trainer's: the
        minimum over the ranks, so a task switches everywhere once it saturated on every rank)."""
        saturated = saturated_tasks(self.recent, self.recent_count).long()
        saturated = saturated if agree is None else agree(saturated)
        for task in [t for t, hit in enumerate(saturated.tolist()) if hit]:  # (a log row's host read)
            if self.world.time_limits[task] < 1000:
                self.world.set_time_limit(max(self.episode_length, 1000), task)

    def state_dict(self) -> dict:
        return {"recent": self.recent.clone(), "recent_count": self.recent_count.clone()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("recent", "recent_count"):
            if key in state:  # (runs checkpointed before the saturation rings start them fresh)
                getattr(self, key).copy_(state[key])
