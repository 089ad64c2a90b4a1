"""The EZ-M search as the agent runs it: its settings, and one search per position of a model.

Acting (acting.py) and reanalysis (reanalyze.py) both search through ``search_positions``: root
candidates drawn from the model's policy, children drawn at every expanded node, the batched kernels
of ``ezm_gpu.kernels`` in between. Notation as in docs/search.md: N simulations, K root candidates, m0 of
them considered, k children per node.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import torch

from .kernels import SampledRecurrentFnOutput, SearchConfig, SearchOutput, sampled_gumbel_search
from .sampling import sample_candidates

__all__ = ["SearchSettings", "search_positions"]

CandidateFn = Callable[..., torch.Tensor]  # sample_candidates' signature


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The agent's search: the kernels' settings (N, m0, k, γ; their defaults are EZ-M's and stay defined
    in ``kernels.SearchConfig``) and how candidates are drawn (K, and how many of them use 3x the policy's
    std). Values: EZ-M's release. Checked where a run's config is (``config.validate``) and, for N, m0, k and
    γ, by ``SearchConfig`` when a search is made."""

    num_simulations: int = SearchConfig.num_simulations  # N: simulations per search
    num_top_actions: int = SearchConfig.num_top_actions  # m0: root candidates considered (m = min(m0, K))
    num_child_actions: int = SearchConfig.num_child_actions  # k: children drawn at every expanded node
    discount: float = SearchConfig.discount  # γ: the search's, and the value targets'
    num_root_actions: int = 16  # K: root candidates drawn from the policy
    root_wide: int = 12  # of the K root candidates, the last root_wide use 3x std
    child_wide: int = 1  # of the k children, the last child_wide use 3x std

    @property
    def kernel_config(self) -> SearchConfig:
        """The kernels' ``SearchConfig`` of these settings (built once per distinct settings: every search of a
        run reuses it; a module-level cache rather than a cached_property, whose lock torch.compile cannot trace)."""
        return _kernel_config(self.num_simulations, self.num_top_actions, self.num_child_actions, self.discount)


@functools.lru_cache(maxsize=None)
def _kernel_config(num_simulations: int, num_top_actions: int, num_child_actions: int, discount: float) -> SearchConfig:
    return SearchConfig(num_simulations=num_simulations, num_top_actions=num_top_actions,
                        num_child_actions=num_child_actions, discount=discount)


@torch.no_grad()
def search_positions(model, obs: torch.Tensor, task_ids: torch.Tensor, settings: SearchSettings,
                     generator: Optional[torch.Generator] = None, candidates: CandidateFn = sample_candidates,
                     backend: Optional[str] = None) -> tuple[SearchOutput, torch.Tensor]:
    """One EZ-M search per row: obs [B, obs_dim], task_ids [B] -> (SearchOutput, initial values [B]).

    Root: K = ``settings.num_root_actions`` policy draws (the last ``root_wide`` with 3x std); every
    expanded node: k = ``settings.num_child_actions`` draws (the last ``child_wide`` wide); uniform priors.
    ``candidates`` replaces the draws (tests); ``backend`` picks the kernels' backend (None: automatic).
    """
    mask = model.action_mask(task_ids)
    root = model.initial_inference(obs, task_ids, generator=generator)
    root_actions = candidates(root.policy_mean, root.policy_log_std, settings.num_root_actions, settings.root_wide,
                              mask, generator)
    k = settings.num_child_actions

    def recurrent_fn(latent: torch.Tensor, action: torch.Tensor) -> SampledRecurrentFnOutput:
        step = model.recurrent_inference(latent, action, task_ids, generator=generator)
        children = candidates(step.policy_mean, step.policy_log_std, k, settings.child_wide, mask, generator)
        return SampledRecurrentFnOutput(step.next_latent, step.reward, step.value, children,
                                 torch.zeros_like(children[..., 0]))

    out = sampled_gumbel_search(root.latent, root.value, root_actions, torch.zeros_like(root_actions[..., 0]),
                                recurrent_fn, settings.kernel_config, backend=backend, check_finite=False)
    return out, root.value
