"""Acting (self-play): the actions of all W worlds for one env step (``docs/algorithm.md#acting``).

Every env step runs one batched EZ-M search over all worlds with the acting (EMA) model and executes
each world's chosen root action. During a task's first ``random_steps`` transitions (release: 1000)
its worlds act uniformly at random instead. The per-world choice is a [W] bool tensor and is applied
with ``torch.where``: nothing is read back to the host, so a step can run inside a CUDA graph and the
search always has the same shape whether 0, some or all worlds act randomly.

Units: observations raw env units [W, obs_dim]; actions in [-1, 1] per dim (search candidates are
clipped to +-0.999, uniform draws lie in [-1, 1)), exactly 0 on a task's masked (padded) dims; values
are discounted returns in task reward units.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch

from . import rng
from .planning import SearchSettings, search_positions

__all__ = ["ActOutput", "act", "uniform_actions", "random_worlds"]


@dataclasses.dataclass
class ActOutput:
    """Result of ``act`` for W worlds with A (padded) action dims."""

    actions: torch.Tensor  # [W, A] float: the actions to execute, in [-1, 1], 0 on masked dims
    random: torch.Tensor  # [W] bool: the world took a uniform random action instead of the search's
    root_value: Optional[torch.Tensor]  # [W] float: search root value V(0) of every world (also the
    # random ones: the search ran for them too); None when ``random=True`` skipped the search
    initial_value: Optional[torch.Tensor]  # [W] float: the model's value of the root observation (min
    # of 2 random heads); None when the search was skipped


def uniform_actions(action_mask: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform random actions: action_mask [W, A] (1 valid, 0 padded) -> [W, A], U[-1, 1) on valid dims, 0 elsewhere."""
    u = rng.uniform(action_mask.shape, generator, action_mask.device)
    return (2.0 * u - 1.0) * action_mask


def random_worlds(task_ids: torch.Tensor, transitions_per_task: torch.Tensor,
                  random_steps: int) -> torch.Tensor:
    """Which worlds still act randomly: task_ids [W] int, transitions_per_task [T] int (transitions
    collected so far per task, on the same device) -> [W] bool, ``transitions_per_task[task] < random_steps``.

    On device, no host read. The count is the caller's (e.g. env steps taken per task); the replay's
    ``num_added`` also counts final-observation rows, which only moves the switch by a few steps.
    """
    return transitions_per_task.index_select(0, task_ids.long()) < random_steps


@torch.no_grad()
def act(model, obs: torch.Tensor, task_ids: torch.Tensor, settings: SearchSettings,
        generator: Optional[torch.Generator] = None, random: Union[bool, torch.Tensor] = False,
        **search_options) -> ActOutput:
    """The actions of W worlds: one batched EZ-M search (``planning.search_positions``), or uniform draws.

    Args:
      model: the acting ``EZMModel`` (the EMA copy). Run in ``eval()`` mode (BatchNorm uses its running
        statistics, any W works) under ``no_grad``; its previous train/eval mode is restored afterwards.
      obs: [W, obs_dim] float raw observations (zero-padded to the task set's obs_dim).
      task_ids: [W] int64 task of each world.
      settings: the search (``planning.SearchSettings``; release: N = 32, K = 16, k = 2).
      generator: torch.Generator on obs' device: the search's candidate draws and value-head choice, then
        the uniform draws, in that order (so with ``random`` all False the actions equal
        ``search_positions(...)[0].action`` for the same generator state).
      random: False: every world executes its search action. True: every world acts uniformly at random
        and the search is skipped (no model call; e.g. before any task has ``random_steps`` transitions).
        A [W] bool tensor: per world (``random_worlds``); the search runs for all W worlds and the choice
        is made on device.
      search_options: passed to ``search_positions`` (candidates, backend).

    Returns:
      ``ActOutput``: actions [W, A] (0 on masked dims), the per-world random flags, and the search's root
      values for logging. No host synchronisation.
    """
    if not isinstance(obs, torch.Tensor) or obs.dim() != 2:
        raise ValueError(f"obs must be a [W, obs_dim] tensor, got "
                         f"{list(obs.shape) if isinstance(obs, torch.Tensor) else type(obs).__name__}")
    worlds = obs.shape[0]
    if not isinstance(task_ids, torch.Tensor) or tuple(task_ids.shape) != (worlds,):
        raise ValueError(f"task_ids must be a [W] = [{worlds}] tensor, got "
                         f"{list(task_ids.shape) if isinstance(task_ids, torch.Tensor) else type(task_ids).__name__}")
    mask = model.action_mask(task_ids)
    if isinstance(random, bool):
        if random:  # all random: the search's result would be discarded, so do not run it
            return ActOutput(actions=uniform_actions(mask, generator),
                             random=torch.ones(worlds, dtype=torch.bool, device=obs.device),
                             root_value=None, initial_value=None)
        per_world = None
    elif isinstance(random, torch.Tensor) and random.dtype == torch.bool and tuple(random.shape) == (worlds,):
        per_world = random.to(obs.device)
    else:
        raise ValueError(f"random must be a bool or a [W] = [{worlds}] bool tensor, got "
                         f"{(random.dtype, list(random.shape)) if isinstance(random, torch.Tensor) else random!r}")

    was_training = model.training
    model.eval()
    try:
        out, initial_value = search_positions(model, obs, task_ids, settings, generator, **search_options)
    finally:
        model.train(was_training)
    actions = out.action
    if per_world is None:
        per_world = torch.zeros(worlds, dtype=torch.bool, device=obs.device)
    else:
        # Draw for every world (fixed shapes, no host read of how many are random), keep the flagged ones.
        actions = torch.where(per_world[:, None], uniform_actions(mask, generator), actions)
    return ActOutput(actions=actions, random=per_world, root_value=out.root_value, initial_value=initial_value)
