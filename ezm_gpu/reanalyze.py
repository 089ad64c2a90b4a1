"""Reanalysis: re-search every sampled position with the reanalyse (target) model (``docs/algorithm.md#targets-and-reanalysis``).

For a batch of windows o_t … o_{t+L} it runs one batched ``sampled_gumbel_search`` over the K+1
positions t … t+K of every sample (B·(K+1) trees at once), giving the policy targets (the searches'
chosen actions) and the search values, and evaluates the model on all L+1 observations for the
n-step bootstrap values. Nothing is read back to the host.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .planning import SearchSettings, search_positions
from .replay import ReplayBatch
from .targets import mixed_values, n_step_values

__all__ = ["Reanalysis", "reanalyze"]


@dataclasses.dataclass
class Reanalysis:
    """Targets of a batch: B samples, K unroll steps, A action dims."""

    best_actions: torch.Tensor  # [B, K+1, A] the searches' chosen actions (policy targets)
    search_values: torch.Tensor  # [B, K+1] root values of the searches
    bootstrap_values: torch.Tensor  # [B, L+1] model values of o_t … o_{t+L}
    value_targets: torch.Tensor  # [B, K+1] n-step (or, per the mixed rule, search) value targets
    reward_targets: torch.Tensor  # [B, K] r_t … r_{t+K-1}


@torch.no_grad()
def reanalyze(model, batch: ReplayBatch, settings: SearchSettings, unroll_steps: int, td_steps: int,
              num_updates: torch.Tensor | int, generator: Optional[torch.Generator] = None, **search_options) -> Reanalysis:
    """Targets for a replay batch with the reanalyse model (in eval mode).

    Args:
      model: an ``EZMModel`` (the EMA / target copy).
      batch: a ``ReplayBatch`` with L >= K + n.
      settings: the search (its discount γ is the value targets' too).
      unroll_steps: K of the unroll; td_steps: n (the replay's window, ``ReplayConfig``).
      num_updates: updates done so far ([] int tensor or int; selects the mixed value rule).
      generator: torch.Generator for candidate draws and value-head choice.
      search_options: passed to ``planning.search_positions`` (candidates, backend).
    """
    samples, positions = batch.obs.shape[0], unroll_steps + 1
    roots = batch.obs[:, :positions].reshape(samples * positions, -1)
    tasks = batch.task_ids.repeat_interleave(positions)
    out, _ = search_positions(model, roots, tasks, settings, generator, **search_options)
    every_obs = batch.obs.reshape(-1, batch.obs.shape[-1])
    values = model.initial_inference(every_obs, batch.task_ids.repeat_interleave(batch.obs.shape[1]),
                                     generator=generator).value.view(samples, -1)
    search_values = out.root_value.view(samples, positions)
    n_step = n_step_values(batch.rewards, values, batch.step_mask, batch.obs_mask, batch.terminal, settings.discount,
                           td_steps, unroll_steps)
    return Reanalysis(best_actions=out.action.view(samples, positions, -1), search_values=search_values,
                      bootstrap_values=values,
                      value_targets=mixed_values(n_step, search_values, batch.age, num_updates),
                      reward_targets=batch.rewards[:, :unroll_steps])
