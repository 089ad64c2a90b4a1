"""Search configuration and the sequential-halving schedule it implies."""
from __future__ import annotations

import dataclasses
import functools
import math

__all__ = ["SearchConfig", "HalvingSchedule", "halving_schedule"]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of the sampled Gumbel search (defaults are EZ-M's).

    The number of root candidates K is not a field: it is the size of the ``root_actions`` the caller
    passes, so one config serves any K.
    """

    num_simulations: int = 32  # N: simulations per search; one new leaf per tree per simulation
    num_top_actions: int = 16  # m0: root candidates kept at simulation 0 (m = min(m0, K))
    num_child_actions: int = 2  # k: sampled actions of every non-root node, given by the model
    discount: float = 0.99  # gamma applied to the value of the next node
    c_visit: float = 50.0  # sigma(q) = (c_visit + max child visits) * c_scale * q
    c_scale: float = 0.1  # see c_visit
    value_delta: float = 0.01  # floor of the min-max normalisation range

    def __post_init__(self):
        for name in ("num_simulations", "num_top_actions", "num_child_actions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SearchConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("discount", "c_visit", "c_scale", "value_delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"SearchConfig.{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"SearchConfig.discount must lie in [0, 1], got {self.discount!r}")
        for name in ("c_visit", "c_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"SearchConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.value_delta <= 0:
            raise ValueError(f"SearchConfig.value_delta must be > 0, got {self.value_delta!r}")

    def schedule(self, num_root_actions: int) -> "HalvingSchedule":
        """The sequential-halving schedule of a search with K = num_root_actions candidates."""
        return halving_schedule(self.num_simulations, min(self.num_top_actions, num_root_actions))


@dataclasses.dataclass(frozen=True)
class HalvingSchedule:
    """What sequential halving does at each simulation s = 0 … N-1 (host-side, static).

    The schedule depends only on (N, m), never on values, so every tree of a batch follows it in
    lockstep: halving steps and survivor counts are Python integers, the kernels get them as scalars
    and the search loop keeps fixed shapes (CUDA-graph friendly).
    """

    num_simulations: int  # N
    num_considered: int  # m = min(m0, K), survivors at simulation 0
    survivors: tuple[int, ...]  # [N] survivor count seen by simulation s's root selection
    keep: tuple[int, ...]  # [N] survivors kept by the halving after simulation s (0 = no halving)
    phase: tuple[int, ...]  # [N] halvings done after simulation s
    phase_end: tuple[int, ...]  # [N] phase end used by simulation s's halving check (0 = never set)
    max_descents: tuple[int, ...]  # [N] bound on interior steps below the root at simulation s

    @property
    def final_survivors(self) -> int:
        """Survivor count after the last simulation."""
        return self.keep[-1] or self.survivors[-1]


@functools.lru_cache(maxsize=256)
def halving_schedule(num_simulations: int, num_considered: int) -> HalvingSchedule:
    """Sequential-halving schedule of search.md for N simulations and m root candidates.

    ``max_descents[s]`` bounds how many interior nodes selection can pass at simulation s: the
    selected survivor is the least visited one, and a root child with v visits has a subtree at most
    v deep. Fewest-visits-first keeps the survivors' counts within one of each other (a halving keeps
    a subset, which stays so), so the counts are ``lower`` for some survivors and ``lower + 1`` for
    the rest; the schedule tracks the largest possible ``lower``, assuming every halving keeps the
    most visited survivors. Loops run to this static bound instead of the worst case s.
    """
    n, m = num_simulations, num_considered
    phase_num = (m - 1).bit_length()  # ceil(log2 m); 0 for m = 1
    m_cur, phase, phase_end = m, 0, 0
    lower, at_lower, above = 0, m, 0  # survivors with `lower` and with `lower + 1` visits
    survivors, keep, phases, phase_ends, descents = [], [], [], [], []
    for s in range(n):
        survivors.append(m_cur)
        descents.append(lower)
        at_lower, above = at_lower - 1, above + 1  # the selected survivor had `lower` visits
        if at_lower == 0:
            lower, at_lower, above = lower + 1, above, 0
        if phase_end <= s:  # the previous phase ended at s (or none was set): set the next end
            if phase < phase_num - 1:
                phase_end = min(n, phase_end + max(1, n // phase_num // m_cur) * m_cur)
            elif phase == phase_num - 1:
                phase_end = n
        phase_ends.append(phase_end)
        kept = 0
        if s + 1 >= phase_end and m_cur >= 2:
            kept = m_cur // 2
            m_cur, phase = kept, phase + 1
            kept_above = min(above, kept)
            if kept_above == kept:
                lower, at_lower, above = lower + 1, kept, 0
            else:
                at_lower, above = kept - kept_above, kept_above
        keep.append(kept)
        phases.append(phase)
    return HalvingSchedule(n, m, tuple(survivors), tuple(keep), tuple(phases), tuple(phase_ends),
                           tuple(descents))
