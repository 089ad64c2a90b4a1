"""Searches of a small random world model: the inputs, the timing and the check against the torch reference.

Shared by ``python -m ezm_gpu.kernels`` and ``python -m ezm_gpu.selfcheck``, which both time a batched search
and, when the Triton kernels ran, hold them to ``agreement``'s rule (integers identical except after a float32
near-tie; floats of the trees searched identically within the search spec's tolerance).
"""
from __future__ import annotations

import dataclasses
import time
import torch

from .agreement import Agreement, compare, float_excess, reference_with_margins
from .config import SearchConfig
from .search import SearchOutput, sampled_gumbel_search

__all__ = ["RandomModel", "random_inputs", "timed_search", "Verdict", "check_against_reference"]


class RandomModel:
    """A one-layer tanh world model with k child actions per node; shapes as ``recurrent_fn`` expects:
    (embedding [B, D], action [B, A]) -> (next [B, D], reward [B], value [B], children [B, k, A] in (-1, 1),
    child prior logits [B, k])."""

    def __init__(self, latent: int, action_dim: int, num_child: int, device: torch.device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = (torch.randn(latent + action_dim, latent, generator=g) * 0.5).to(device)
        self.head = torch.randn(latent, 2 + num_child * (action_dim + 1), generator=g).to(device)
        self.num_child, self.action_dim = num_child, action_dim

    def __call__(self, embedding, action):
        nxt = torch.tanh(torch.cat([embedding, action], 1) @ self.w)
        out = nxt @ self.head
        k, a = self.num_child, self.action_dim
        children = torch.tanh(out[:, 2:2 + k * a]).clamp(-0.999, 0.999).view(-1, k, a)
        return nxt, out[:, 0], out[:, 1], children, out[:, 2 + k * a:]


def random_inputs(trees: int, root_actions: int, action_dim: int, latent: int, device: torch.device,
                  seed: int = 1) -> dict:
    """``sampled_gumbel_search``'s root inputs for B = ``trees``: root_embedding [B, D] in (-1, 1), root_value
    [B] ~ N(0, 1), root_actions [B, K, A] uniform in [-1, 1], root_prior_logits [B, K] zeros (EZ-M's)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        root_embedding=torch.tanh(torch.randn(trees, latent, generator=g)).to(device),
        root_value=torch.randn(trees, generator=g).to(device),
        root_actions=(torch.rand(trees, root_actions, action_dim, generator=g) * 2 - 1).to(device),
        root_prior_logits=torch.zeros(trees, root_actions, device=device),
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_search(inputs: dict, model, config: SearchConfig, backend: str, searches: int = 1,
                 search=sampled_gumbel_search) -> tuple[SearchOutput, float]:
    """One untimed search (compiles the kernels of the shape), then ``searches`` timed ones without the
    up-front finiteness read: (the last output, seconds per search, wall clock between device synchronisations).
    ``search``: the search function (``sampled_gumbel_search``; a stand-in for tests)."""
    device = inputs["root_actions"].device
    out = search(**inputs, recurrent_fn=model, config=config, backend=backend)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(searches):
        out = search(**inputs, recurrent_fn=model, config=config, backend=backend, check_finite=False)
    _synchronize(device)
    return out, (time.perf_counter() - start) / searches


@dataclasses.dataclass
class Verdict:
    """A backend's search against the reference: the per-tree ``Agreement`` and, over the trees searched
    identically, each float output's largest excess over the spec's tolerance (<= 0: within it)."""

    agreement: Agreement
    float_excess: dict  # output name -> float

    @property
    def agrees(self) -> bool:
        return self.agreement.agrees and all(excess <= 0 for excess in self.float_excess.values())

    def summary(self) -> str:
        worst = max(self.float_excess.items(), key=lambda item: item[1], default=None)
        floats = "no identical tree" if worst is None else (
            "floats within rtol 1e-5 + atol 1e-6" if worst[1] <= 0 else f"{worst[0]} exceeds rtol 1e-5 + atol 1e-6 "
                                                                       f"by {worst[1]:.2e}")
        return f"{self.agreement.summary()}; {floats}"


def check_against_reference(candidate: SearchOutput, inputs: dict, model, config: SearchConfig) -> Verdict:
    """Runs the torch reference on the same ``inputs`` (the search's root arguments, ``gumbel`` included if any) and
    model and applies ``agreement``'s rule to ``candidate`` (reads the verdict back to the host)."""
    expected, margin = reference_with_margins(**inputs, recurrent_fn=model, config=config)
    agreement = compare(candidate, expected, margin)
    return Verdict(agreement, float_excess(candidate, expected, agreement.identical))
