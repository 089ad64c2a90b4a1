"""When two search backends agree: integer outputs identical, except at float32 near-ties.

Compiled Triton on a GPU rounds differently from torch and from the interpreter: fp32 division compiles to
``div.full.f32`` (2 ulp), ``tl.exp`` to ``ex2.approx.f32``, and reductions add in another order (FMA
contraction is off: ``enable_fp_fusion=False``). Every float-ranked decision of the search (the interior
argmax, the halving ranking, the final choice) is then taken the same way unless its two closest scores are within
that rounding of each other: such a near-tie may break either way, and the tree's later selections,
visit counts and survivors follow the branch taken. The rule this module defines and the CLI
(``python -m ezm_gpu.kernels``) applies:

  a tree agrees when its chosen action, root visit counts and survivors equal the reference's, or when
  they differ and the reference's smallest decision margin in that tree is at most ``NEAR_TIE``.

The margin of a decision is the smallest gap between two of its scores, relative to max(1, |largest
score|) (``reference.record_margin``). ``NEAR_TIE = 1e-5``: float32 has eps = 1.19e-7, and a score is the
end of about 20 roundings (value sums and means, the mixed value, the min-max normalisation, sigma, the
softmax's exp and division, the visit term), each at most 2 ulp with approximate division and exp:
20 x 2 x 1.19e-7 = 4.8e-6 per score, about 1e-5 for the difference of two.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from . import reference
from .config import SearchConfig
from .search import SampledRecurrentFn, SearchOutput, _check_inputs, _simulate

__all__ = ["NEAR_TIE", "FLOAT_RTOL", "FLOAT_ATOL", "FLOAT_OUTPUTS", "Agreement", "reference_with_margins", "compare",
           "float_excess"]

NEAR_TIE = 1e-5  # relative score gap within float32 rounding of two differently-rounded backends (above)
# The search spec's tolerance for the float outputs of a kernel and the reference (fp32); it applies to the
# trees they searched identically (after a flipped near-tie the trees, and so their floats, part ways).
FLOAT_RTOL, FLOAT_ATOL = 1e-5, 1e-6
FLOAT_OUTPUTS = ("root_value", "completed_q", "action_weights", "pi_prime_scores")


@dataclasses.dataclass
class Agreement:
    """Per-tree verdicts of ``compare``, each [B] (exactly one of the three bools is set per tree)."""

    identical: torch.Tensor  # [B] bool: action, visit counts and survivors equal
    near_tie: torch.Tensor  # [B] bool: they differ, and the reference met a near-tie in that tree
    differ: torch.Tensor  # [B] bool: they differ without a near-tie (a real disagreement)
    margin: torch.Tensor  # [B] float32: the reference's smallest decision margin per tree

    @property
    def agrees(self) -> bool:
        """No real disagreement (reads one flag back to the host)."""
        return not bool(self.differ.any())

    def summary(self) -> str:
        counts = [int(x.sum()) for x in (self.identical, self.near_tie, self.differ)]
        return (f"{counts[0]} identical, {counts[1]} differ after a near-tie (margin <= {NEAR_TIE:g}), "
                f"{counts[2]} differ otherwise, of {self.identical.numel()} trees")


def reference_with_margins(root_embedding: torch.Tensor, root_value: torch.Tensor, root_actions: torch.Tensor,
                           root_prior_logits: torch.Tensor, recurrent_fn: SampledRecurrentFn,
                           config: SearchConfig = SearchConfig(),
                           gumbel: Optional[torch.Tensor] = None) -> tuple[SearchOutput, torch.Tensor]:
    """The torch reference search (same arguments as ``sampled_gumbel_search``) and, per tree, the smallest
    margin of any float-ranked decision it took: (output, margin [B] float32; inf for a tree that had none)."""
    _check_inputs(root_embedding, root_value, root_actions, root_prior_logits, gumbel, config)
    margin = torch.full((root_actions.shape[0],), float("inf"), device=root_actions.device)
    output = _simulate(root_embedding, root_value, root_actions, root_prior_logits, recurrent_fn, config, gumbel,
                       reference, margin)
    return output, margin


def compare(candidate: SearchOutput, expected: SearchOutput, margin: torch.Tensor) -> Agreement:
    """Applies the rule above to ``candidate`` (any backend) against ``expected`` (the reference) and the
    reference's ``margin`` [B] from ``reference_with_margins``."""
    identical = ((candidate.action_index == expected.action_index)
                 & (candidate.visit_counts == expected.visit_counts).all(1)
                 & (candidate.survivors == expected.survivors).all(1))
    tie = margin <= NEAR_TIE
    return Agreement(identical=identical, near_tie=~identical & tie, differ=~identical & ~tie, margin=margin)


def float_excess(candidate: SearchOutput, expected: SearchOutput, trees: torch.Tensor) -> dict[str, float]:
    """Per float output (``FLOAT_OUTPUTS``), the largest |candidate - expected| - (FLOAT_ATOL + FLOAT_RTOL x
    |expected|) over the trees where ``trees`` [B] bool is set (usually ``Agreement.identical``): <= 0 when every
    value is within the spec's tolerance; {} when no tree is selected. Reads the results back to the host."""
    if not bool(trees.any()):
        return {}
    excess = {}
    for name in FLOAT_OUTPUTS:
        ours, theirs = getattr(candidate, name)[trees].float(), getattr(expected, name)[trees].float()
        gap = ((ours - theirs).abs() - (FLOAT_ATOL + FLOAT_RTOL * theirs.abs())).nan_to_num(nan=float("inf"))
        close = torch.isclose(ours, theirs, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True)  # NaN = NaN, inf = inf
        excess[name] = float(torch.where(close, gap.clamp(max=0.0), gap).max())
    return excess
