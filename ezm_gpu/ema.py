"""Exponential-moving-average copies of the model, for acting and reanalysis (spec/ezm.md "Loss")."""
from __future__ import annotations

import copy

import torch

__all__ = ["EMA"]


class EMA:
    """Keeps ``copy`` of ``model`` with theta' <- (1 - tau) theta' + tau theta every ``interval`` updates.

    Buffers (BatchNorm and observation-normalisation statistics) are copied as they are: they are
    estimates, not weights, and averaging them would lag the normaliser the online model trains with.
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
        online = list(model.parameters())
        averaged = list(self.copy.parameters())
        torch._foreach_lerp_(averaged, online, self.tau)
        for target, source in zip(self.copy.buffers(), model.buffers()):
            target.copy_(source)
        return True

    def state_dict(self) -> dict:
        return {"copy": self.copy.state_dict(), "tau": self.tau, "interval": self.interval}

    def load_state_dict(self, state: dict) -> None:
        self.copy.load_state_dict(state["copy"])
        self.tau, self.interval = state["tau"], state["interval"]
