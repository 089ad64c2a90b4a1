"""Reanalysis: re-search every sampled position with the reanalyse (target) model (spec/ezm.md).

For a batch of windows o_t … o_{t+L} it runs one batched ``sampled_gumbel_search`` over the K+1
positions t … t+K of every sample (B·(K+1) trees at once), giving the policy targets (the searches'
chosen actions) and the search values, and evaluates the model on all L+1 observations for the
n-step bootstrap values. Nothing is read back to the host.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from .kernels import SearchConfig, sampled_gumbel_search
from .replay import ReplayBatch
from .sampling import CHILD_WIDE, ROOT_WIDE, sample_candidates
from .targets import mixed_values, n_step_values

__all__ = ["Reanalysis", "search_positions", "reanalyze"]

CandidateFn = Callable[..., torch.Tensor]  # sample_candidates' signature


@dataclasses.dataclass
class Reanalysis:
    """Targets of a batch: B samples, K unroll steps, A action dims."""

    best_actions: torch.Tensor  # [B, K+1, A] the searches' chosen actions (policy targets)
    search_values: torch.Tensor  # [B, K+1] root values of the searches
    bootstrap_values: torch.Tensor  # [B, L+1] model values of o_t … o_{t+L}
    value_targets: torch.Tensor  # [B, K+1] n-step (or, per the mixed rule, search) value targets
    reward_targets: torch.Tensor  # [B, K] r_t … r_{t+K-1}


@torch.no_grad()
def search_positions(model, obs: torch.Tensor, task_ids: torch.Tensor, config: SearchConfig,
                     generator: Optional[torch.Generator] = None, num_root: int = 16, root_wide: int = ROOT_WIDE,
                     child_wide: int = CHILD_WIDE, candidates: CandidateFn = sample_candidates,
                     backend: Optional[str] = None):
    """One EZ-M search per row: obs [N, obs_dim], task_ids [N] -> (SearchOutput, initial values [N]).

    Root candidates: ``num_root`` policy draws (the last ``root_wide`` with 3x std); every expanded
    node gets ``config.num_child_actions`` draws (the last ``child_wide`` wide); uniform priors.
    """
    mask = model.action_mask(task_ids)
    root = model.initial_inference(obs, task_ids, generator=generator)
    root_actions = candidates(root.policy_mean, root.policy_log_std, num_root, root_wide, mask, generator)
    k = config.num_child_actions

    def recurrent_fn(latent, action):
        step = model.recurrent_inference(latent, action, task_ids, generator=generator)
        children = candidates(step.policy_mean, step.policy_log_std, k, min(child_wide, k), mask, generator)
        return step.next_latent, step.reward, step.value, children, torch.zeros_like(children[..., 0])

    out = sampled_gumbel_search(root.latent, root.value, root_actions, torch.zeros_like(root_actions[..., 0]),
                                recurrent_fn, config, backend=backend, check_finite=False)
    return out, root.value


@torch.no_grad()
def reanalyze(model, batch: ReplayBatch, config: SearchConfig, discount: float, unroll_steps: int, td_steps: int,
              num_updates: int, generator: Optional[torch.Generator] = None, **search_kwargs) -> Reanalysis:
    """Targets for a replay batch with the reanalyse model (in eval mode).

    Args:
      model: an ``EZMModel`` (the EMA / target copy).
      batch: a ``ReplayBatch`` with L >= K + n.
      config: the search configuration.
      discount: γ; unroll_steps: K; td_steps: n.
      num_updates: updates done so far (selects the mixed value rule).
      generator: torch.Generator for candidate draws and value-head choice.
      search_kwargs: passed to ``search_positions`` (num_root, root_wide, child_wide, candidates, backend).
    """
    samples, positions = batch.obs.shape[0], unroll_steps + 1
    roots = batch.obs[:, :positions].reshape(samples * positions, -1)
    tasks = batch.task_ids.repeat_interleave(positions)
    out, _ = search_positions(model, roots, tasks, config, generator, **search_kwargs)
    every_obs = batch.obs.reshape(-1, batch.obs.shape[-1])
    values = model.initial_inference(every_obs, batch.task_ids.repeat_interleave(batch.obs.shape[1]),
                                     generator=generator).value.view(samples, -1)
    search_values = out.root_value.view(samples, positions)
    n_step = n_step_values(batch.rewards, values, batch.step_mask, batch.obs_mask, batch.terminal, discount,
                           td_steps, unroll_steps)
    return Reanalysis(best_actions=out.action.view(samples, positions, -1), search_values=search_values,
                      bootstrap_values=values,
                      value_targets=mixed_values(n_step, search_values, batch.age, num_updates),
                      reward_targets=batch.rewards[:, :unroll_steps])
