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
    def update(self, model: torch.nn.Module, step: torch.Tensor | int) -> torch.Tensor:
        """Call after optimizer step ``step`` (1, 2, ...; a [] int tensor or an int); averages on multiples of
        ``interval``. Returns [] bool: whether it averaged.

        The choice is made on the device (every call launches the same kernels, with rate 0 off the
        interval), so that an update replays from a captured CUDA graph with its step count on the device.
        """
        source = model.state_dict()
        target_state = self.copy.state_dict()  # state_dict() tensors share storage
        device = next(iter(target_state.values())).device
        due = torch.as_tensor(step, device=device) % self.interval == 0
        averaged: dict = {}  # dtype -> (targets, sources): _foreach_lerp_ takes one dtype per list
        for name, target in target_state.items():
            if target.is_floating_point():
                targets, sources = averaged.setdefault(target.dtype, ([], []))
                targets.append(target)
                sources.append(source[name])
            else:
                target.copy_(torch.where(due, source[name], target))
        for dtype, (targets, sources) in averaged.items():
            rate = due.to(dtype) * self.tau  # tau or 0: x' + 0 (x - x') = x' exactly
            torch._foreach_lerp_(targets, sources, [rate] * len(targets))
        return due

    def state_dict(self) -> dict:
        return {"copy": self.copy.state_dict(), "tau": self.tau, "interval": self.interval}

    def load_state_dict(self, state: dict) -> None:
        self.copy.load_state_dict(state["copy"])
        self.tau, self.interval = state["tau"], state["interval"]
