"""Value targets (``docs/algorithm.md#targets-and-reanalysis``): n-step bootstrapped values and EZ-M's mixed rule.

All functions are batched over samples, fixed-shape, and read nothing back to the host.
"""
from __future__ import annotations

import torch

__all__ = ["n_step_values", "mixed_values", "MIXED_AFTER_UPDATES", "RECENT_TRANSITIONS"]

MIXED_AFTER_UPDATES = 50_000  # from this update on, old samples take the search value as target
RECENT_TRANSITIONS = 200_000  # "old" = outside the task's newest 2e5 transitions


def n_step_values(rewards: torch.Tensor, values: torch.Tensor, step_mask: torch.Tensor, obs_mask: torch.Tensor,
                  terminal: torch.Tensor, discount: float, td_steps: int, unroll_steps: int) -> torch.Tensor:
    """z_{t+k} = Σ_{i<m} γ^i r_{t+k+i} + γ^m V̂(o_{t+k+m}) for k = 0 … K, m = min(n, steps left in the episode).

    A window that reaches the end of its episode bootstraps from the episode's final observation (the
    episode was truncated) or from 0 (it terminated: absorbing). EZ-M's protocol only truncates.

    Args:
      rewards: [B, L] r_t … r_{t+L-1}, L >= K + n.
      values: [B, L+1] V̂(o_t) … V̂(o_{t+L}) from the reanalyse model.
      step_mask: [B, L] bool, step t+j was taken in the episode (a valid prefix per row).
      obs_mask: [B, L+1] bool, o_{t+j} belongs to the episode (its final observation included).
      terminal: [B, L+1] bool, o_{t+j} is the final observation of a terminated episode.
      discount: γ.
      td_steps: n.
      unroll_steps: K.

    Returns:
      [B, K+1] value targets (task units); rows/positions past the episode's end are 0.
    """
    if rewards.shape[1] < unroll_steps + td_steps:
        raise ValueError(f"rewards span {rewards.shape[1]} steps, need K + n = {unroll_steps + td_steps}")
    powers = discount ** torch.arange(td_steps + 1, device=rewards.device, dtype=rewards.dtype)  # γ^0 … γ^n
    bootstrap_ok = obs_mask & ~terminal
    targets = []
    for k in range(unroll_steps + 1):  # K+1 static positions
        taken = step_mask[:, k:k + td_steps].to(rewards.dtype)  # [B, n], a prefix of ones
        steps = taken.sum(1).long()  # m
        summed = (rewards[:, k:k + td_steps] * taken * powers[:td_steps]).sum(1)
        where = (k + steps)[:, None]
        boot = values.gather(1, where)[:, 0] * bootstrap_ok.gather(1, where)[:, 0].to(values.dtype)
        value = summed + powers[steps] * boot
        targets.append(torch.where(obs_mask[:, k], value, torch.zeros_like(value)))
    return torch.stack(targets, 1)


def mixed_values(n_step: torch.Tensor, search: torch.Tensor, age: torch.Tensor, num_updates: torch.Tensor | int,
                 mixed_after: int = MIXED_AFTER_UPDATES, recent: int = RECENT_TRANSITIONS) -> torch.Tensor:
    """EZ-M's value target: n-step values, except that from update ``mixed_after`` on, samples older
    than their task's newest ``recent`` transitions use the reanalysed search value.

    Args:
      n_step: [B, K+1] from ``n_step_values``.
      search: [B, K+1] root values of the reanalysis searches.
      age: [B] int, transitions written to the sample's task after o_t (0 = newest).
      num_updates: updates done so far ([] int tensor, or an int): compared on the device, so that the
        switch happens inside a captured update too.

    Returns:
      [B, K+1] value targets.
    """
    use_search = (age >= recent) & (torch.as_tensor(num_updates, device=age.device) >= mixed_after)
    return torch.where(use_search[:, None], search, n_step)
