"""Sampled candidate actions for the search: the K root candidates and the k children of a node.

EZ-M (``docs/algorithm.md#acting``): candidates are draws of the TD-MPC2 tanh-Gaussian policy; a share of
them uses 3x the policy's standard deviation so the search also sees actions the policy would rarely
propose (how many: planning.SearchSettings; release: root K = 16 with the last 12 wide, children
k = 2 with one wide).
Squashed by tanh, clipped to +-0.999 (the tanh inverse stays finite for log-probabilities), and
masked action dimensions (a task with fewer actuators than the set's widest) are zero.
"""
from __future__ import annotations

from typing import Optional

import torch

from .model import sample_policy

__all__ = ["sample_candidates", "WIDE_SCALE", "ACTION_CLIP"]

WIDE_SCALE = 3.0  # std multiplier of the wide draws
ACTION_CLIP = 0.999


def sample_candidates(mean: torch.Tensor, log_std: torch.Tensor, num: int, num_wide: int,
                      action_mask: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                      ) -> torch.Tensor:
    """Draws ``num`` candidate actions per row of a tanh-Gaussian policy.

    Args:
      mean: [B, A] pre-tanh mean of the policy.
      log_std: [B, A] log standard deviation (pre-tanh).
      num: candidates per row (K at the root, k at an interior node).
      num_wide: how many of them, the last ones, use WIDE_SCALE x std (0 <= num_wide <= num).
      action_mask: optional [B, A] (bool or 0/1 float), 0 where a dimension does not exist for the task.
      generator: torch.Generator on the tensors' device, for reproducible draws.

    Returns:
      [B, num, A] actions in [-0.999, 0.999], 0 in masked dimensions.
    """
    if mean.shape != log_std.shape or mean.dim() != 2:
        raise ValueError(f"mean and log_std must both be [B, A], got {list(mean.shape)} and {list(log_std.shape)}")
    if not 0 <= num_wide <= num or num < 1:
        raise ValueError(f"need num >= 1 and 0 <= num_wide <= num, got num={num}, num_wide={num_wide}")
    narrow = sample_policy(mean, log_std, action_mask, num - num_wide, 1.0, generator)
    wide = sample_policy(mean, log_std, action_mask, num_wide, WIDE_SCALE, generator)
    return torch.cat([narrow, wide], 1).clamp(-ACTION_CLIP, ACTION_CLIP)
