"""dm_control's ``rewards.tolerance`` on torch tensors: the smooth bounds every task's reward is built from.

Pure and batched (any shape); no host synchronisation, so it runs inside captured CUDA graphs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["tolerance"]

_DEFAULT_VALUE_AT_MARGIN = 0.1


def _sigmoid(d: Tensor, value_at_1: float, sigmoid: str) -> Tensor:
    """dm_control's ``_sigmoids``: 1 at ``d == 0``, ``value_at_1`` at ``|d| == 1``. d: any shape."""
    if sigmoid in ("cosine", "linear", "quadratic"):
        if not 0 <= value_at_1 < 1:
            raise ValueError(f"value_at_1 must be in [0, 1) for {sigmoid!r}, got {value_at_1}")
    elif not 0 < value_at_1 < 1:
        raise ValueError(f"value_at_1 must be in (0, 1) for {sigmoid!r}, got {value_at_1}")
    # Scales are Python float64 constants, as in dm_control, so float64 results agree to round-off.
    if sigmoid == "gaussian":
        scale = math.sqrt(-2 * math.log(value_at_1))
        return torch.exp(-0.5 * (d * scale) ** 2)
    if sigmoid == "hyperbolic":
        return 1 / torch.cosh(d * math.acosh(1 / value_at_1))
    if sigmoid == "long_tail":
        return 1 / ((d * math.sqrt(1 / value_at_1 - 1)) ** 2 + 1)
    if sigmoid == "reciprocal":
        return 1 / (d.abs() * (1 / value_at_1 - 1) + 1)
    if sigmoid == "cosine":
        s = d * (math.acos(2 * value_at_1 - 1) / math.pi)
        return torch.where(s.abs() < 1, (1 + torch.cos(math.pi * s)) / 2, torch.zeros_like(s))
    if sigmoid == "linear":
        s = d * (1 - value_at_1)
        return torch.where(s.abs() < 1, 1 - s, torch.zeros_like(s))
    if sigmoid == "quadratic":
        s = d * math.sqrt(1 - value_at_1)
        return torch.where(s.abs() < 1, 1 - s**2, torch.zeros_like(s))
    if sigmoid == "tanh_squared":
        return 1 - torch.tanh(d * math.atanh(math.sqrt(1 - value_at_1))) ** 2
    raise ValueError(f"unknown sigmoid {sigmoid!r}")


def tolerance(x: Tensor, bounds: tuple[float, float] = (0.0, 0.0), margin: float = 0.0,
              sigmoid: str = "gaussian", value_at_margin: float = _DEFAULT_VALUE_AT_MARGIN) -> Tensor:
    """dm_control ``rewards.tolerance``: 1 inside ``bounds``, decaying with distance outside.

    Args:
        x: any shape, float.
        bounds: inclusive (lower, upper), may be infinite; Python floats (static per task).
        margin: distance outside the bounds at which the output equals ``value_at_margin``; 0 makes
            the output a 0/1 indicator.
        sigmoid: decay shape (``gaussian``, ``linear``, ``quadratic``, ``hyperbolic``, ``long_tail``,
            ``reciprocal``, ``cosine``, ``tanh_squared``).
        value_at_margin: output at distance ``margin``.

    Returns:
        Same shape and dtype as ``x``, values in [0, 1].
    """
    lower, upper = bounds
    if lower > upper:
        raise ValueError("lower bound must be <= upper bound")
    if margin < 0:
        raise ValueError("margin must be non-negative")
    in_bounds = (lower <= x) & (x <= upper)
    one = torch.ones_like(x)
    if margin == 0:
        return torch.where(in_bounds, one, torch.zeros_like(x))
    # Inside the bounds the distance is irrelevant (masked below); using 0 there instead of
    # dm_control's `x - upper` keeps infinite bounds from producing inf intermediates.
    d = torch.where(x < lower, lower - x, torch.where(x > upper, x - upper, torch.zeros_like(x))) / margin
    return torch.where(in_bounds, one, _sigmoid(d, value_at_margin, sigmoid))
