"""Exponential-moving-average copies of the model, for acting and reanalysis (``docs/algorithm.md#optimisation-and-ema``)."""
from __future__ import annotations

import copy

import torch

__all__ = ["EMA"]


class EMA:
    """Keeps ``copy`` of ``model`` with x' <- (1 - tau) x' + tau x every ``interval`` updates, for every
    floating-point entry of the state dict: weights, BatchNorm running statistics and the observation
    normaliser's mean, variance and count alike (the release averages the whole state dict).

    Integer entries (BatchNorm's ``num_batches_tracked``) are counters, not estimates: they are copied.
    """

    def __init__(self, model: torch.nn.Module, tau: float = 0.01, interval: int = 5):
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {tau}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.tau, self.interval = float(tau), int(interval)
        self.copy = copy.deepcopy(model).eval()
        self.copy.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> bool:
        """Call after optimizer step ``step`` (1, 2, ...); averages on multiples of ``interval``. Returns
        whether it averaged."""
        if step % self.interval:
            return False
        source = model.state_dict()
        averaged: dict = {}  # dtype -> (targets, sources): _foreach_lerp_ takes one dtype per list
        for name, target in self.copy.state_dict().items():  # state_dict() tensors share storage
            if target.is_floating_point():
                targets, sources = averaged.setdefault(target.dtype, ([], []))
                targets.append(target)
                sources.append(source[name])
            else:
                target.copy_(source[name])
        for targets, sources in averaged.values():
            torch._foreach_lerp_(targets, sources, self.tau)
        return True

    def state_dict(self) -> dict:
        return {"copy": self.copy.state_dict(), "tau": self.tau, "interval": self.interval}

    def load_state_dict(self, state: dict) -> None:
        self.copy.load_state_dict(state["copy"])
        self.tau, self.interval = state["tau"], state["interval"]
