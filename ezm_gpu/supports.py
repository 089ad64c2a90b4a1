"""Categorical supports for rewards and values (EZ-M / EfficientZero V2, continuous control).

A scalar x is first squashed by ``h(x) = sign(x)(sqrt(|x|+1) - 1) + 0.001 x`` (MuZero's invertible
value transform), then spread over ``bins`` atoms spaced evenly in h-space between ``h(lo)`` and
``h(hi)`` ("two-hot": the two neighbouring atoms share the mass linearly). Decoding takes the
expectation of the atoms under the predicted distribution (still in h-space) and maps it back with the
exact inverse ``h^-1``. The release's supports are ``[lo, hi] = [-299, 299]`` with 51 bins for both
reward and value.

Units: scalars are in the task's reward units (reward per env step, or discounted return for values);
"h-space" quantities are unitless.
"""
from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["EPS", "h", "h_inv", "Support"]

EPS = 0.001  # the linear term of h, keeps h invertible and Lipschitz for large |x|


def h(x: torch.Tensor) -> torch.Tensor:
    """h(x) = sign(x)(sqrt(|x|+1) - 1) + 0.001 x, elementwise; any shape, float tensor -> same shape."""
    return torch.sign(x) * (torch.sqrt(torch.abs(x) + 1.0) - 1.0) + EPS * x


def h_inv(y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of ``h``, elementwise; any shape -> same shape.

    Solving |y| = (sqrt(u+1) - 1) + eps·u for u = |x| gives the closed form
    u = ((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1 (MuZero appendix, Proposition A.2).
    Computed as ``(2 (|y| + 1 + eps) / (sqrt(1 + z) + 1))^2 - 1`` with z = 4 eps (|y| + 1 + eps): the same
    number, but without the cancellation of sqrt(1 + z) - 1, which costs ~1e-3 absolute in float32 at |x| ~ 300.
    """
    a = torch.abs(y) + 1.0 + EPS
    u = (2.0 * a / (torch.sqrt(1.0 + 4.0 * EPS * a) + 1.0)) ** 2 - 1.0
    # Rounding can leave u a hair below 0 at y = 0; a negative magnitude would flip signs downstream.
    return torch.sign(y) * u.clamp_min(0.0)


def _h_float(x: float) -> float:
    return math.copysign(math.sqrt(abs(x) + 1.0) - 1.0, x) + EPS * x


def _compute_dtype(t: torch.Tensor) -> torch.Tensor:
    # float64 stays float64 (exact round trips in tests); half precision and integers go to float32,
    # because near |x| = 299 one float16 ulp in h-space is worth several reward units.
    return t if t.dtype == torch.float64 else t.float()


@dataclasses.dataclass(frozen=True)
class Support:
    """A ``bins``-atom categorical support over the scalar range ``[lo, hi]`` (atoms evenly spaced in h-space).

    ``Support()`` is the release's reward/value support: [-299, 299], 51 bins.
    """

    lo: float = -299.0  # smallest representable scalar (task units); encodes to atom 0
    hi: float = 299.0  # largest representable scalar (task units); encodes to atom bins-1
    bins: int = 51  # number of atoms (logits per prediction)

    def __post_init__(self):
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise ValueError(f"Support.bins must be an integer >= 2, got {self.bins!r}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"Support needs finite lo < hi, got [{self.lo!r}, {self.hi!r}]")

    @property
    def h_lo(self) -> float:
        """h(lo): the first atom, in h-space."""
        return _h_float(self.lo)

    @property
    def h_hi(self) -> float:
        """h(hi): the last atom, in h-space."""
        return _h_float(self.hi)

    @property
    def step(self) -> float:
        """Spacing of neighbouring atoms in h-space."""
        return (self.h_hi - self.h_lo) / (self.bins - 1)

    def atoms(self, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The atom locations in h-space, [bins], increasing from h(lo) to h(hi)."""
        # linspace rather than arange(lo, hi + step, step): the release's arange can gain an atom from rounding.
        return torch.linspace(self.h_lo, self.h_hi, self.bins, device=device, dtype=dtype)

    def two_hot(self, x: torch.Tensor) -> torch.Tensor:
        """Two-hot target distribution of scalars.

        Args:
          x: [...] scalars (task units); values outside [lo, hi] (±inf included) are clipped to the range; NaN
            gives a row of NaN.
        Returns:
          [..., bins] probabilities (float64 for float64 input, float32 otherwise) (non-negative, summing to 1): mass ``1 - f`` on atom ``i`` and ``f`` on
          atom ``i + 1`` where ``h(x) = atom_i + f·step``. A value exactly on an atom is one-hot.
        """
        x = _compute_dtype(x)
        nan = torch.isnan(x)
        pos = ((h(x) - self.h_lo) / self.step).clamp(0.0, self.bins - 1)  # fractional atom index (inf: an end)
        pos = torch.where(nan, 0.0, pos)  # NaN has no atom: a valid index here, a NaN row below
        low = pos.floor().clamp(max=self.bins - 2)  # keep low + 1 a valid atom when x sits on the top atom
        frac = pos - low
        low = low.long().unsqueeze(-1)
        target = torch.zeros(x.shape + (self.bins,), dtype=x.dtype, device=x.device)
        target.scatter_(-1, low, (1.0 - frac).unsqueeze(-1))
        target.scatter_add_(-1, low + 1, frac.unsqueeze(-1))
        # A NaN scalar gives a NaN row, so its loss is NaN and the run stops as diverged (never a bad index).
        return torch.where(nan.unsqueeze(-1), float("nan"), target)

    def decode_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """Scalars from distributions over the atoms: h^-1(sum_i p_i atom_i).

        Args:
          probs: [..., bins] probabilities (each row sums to 1).
        Returns:
          [...] scalars (task units), within [lo, hi]; float64 for float64 input, float32 otherwise.
        """
        self._check_bins(probs)
        probs = _compute_dtype(probs)
        expected = (probs * self.atoms(probs.device, probs.dtype)).sum(-1)
        return h_inv(expected)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Scalars from logits: ``decode_probs(softmax(logits))``; [..., bins] -> [...] (task units)."""
        self._check_bins(logits)
        return self.decode_probs(torch.softmax(_compute_dtype(logits), dim=-1))

    def _check_bins(self, t: torch.Tensor) -> None:
        if t.shape[-1] != self.bins:
            raise ValueError(f"expected a last dim of {self.bins} bins, got shape {tuple(t.shape)}")
