"""Random numbers the hot loop can carry into a compiled graph or a CUDA graph.

A ``torch.Generator`` object cannot enter either: dynamo breaks the graph at every call that takes one, and
a CUDA graph replays the Philox offsets it was captured with unless the generator is registered with it.
``CounterRNG`` keeps its whole state in one int64 tensor on the device: a draw of n numbers hashes the
indices ``counter .. counter + n - 1`` with the seed (``envs.mix32``, the hash of the envs' resets) and
advances the counter in place. Nothing is read back to the host, the same seed gives the same numbers on
every device, and a captured graph advances the counter on every replay.

``uniform`` and ``normal`` accept either kind (or None: torch's default generator), so callers take a
``generator`` argument of type ``Generator = Union[torch.Generator, CounterRNG, None]``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .envs.base import mix32

__all__ = ["CounterRNG", "Generator", "uniform", "normal", "permutation"]

_MASK = 0xFFFFFFFF


class CounterRNG:
    """Counter-based random numbers on ``device`` (see the module docstring).

    Attributes:
      seed: int, fixed at construction.
      counter: [] int64 tensor on the device: 32-bit words drawn so far.
    """

    def __init__(self, seed: int, device: Optional[torch.device | str] = None):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        # The seed's two 32-bit halves hashed into one key (a host int: no device read per draw).
        self._key = int(mix32(torch.tensor(seed & _MASK)) ^ mix32(torch.tensor(((seed >> 32) + 0x9E3779B9) & _MASK)))
        self.counter = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.counter.device

    def _words(self, count: int) -> torch.Tensor:
        """[count] int64 independent uniform 32-bit words; advances the counter by ``count``."""
        index = self.counter + torch.arange(count, dtype=torch.int64, device=self.device)
        self.counter.add_(count)
        x = mix32((index & _MASK) ^ self._key)
        return mix32((x + (index >> 32) * 0x85EBCA6B + 0x68E31DA4) & _MASK)

    def uniform(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[shape] uniform in [0, 1): 24 random bits for float32/16 types, 53 for float64."""
        count = math.prod(shape)
        if dtype == torch.float64:
            words = self._words(2 * count).view(2, count)
            bits = (words[0] >> 5) * 67108864 + (words[1] >> 6)  # 27 + 26 bits
            return (bits.to(torch.float64) * (1.0 / (1 << 53))).view(*shape)
        unit = (self._words(count) >> 8).to(torch.float32) * (1.0 / (1 << 24))
        return unit.view(*shape).to(dtype)

    def normal(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[shape] standard normal (Box-Muller on two uniforms per number)."""
        u = self.uniform((2,) + tuple(shape), torch.float32)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[0]))  # 1 - u in (0, 1]: finite
        return (radius * torch.cos(2.0 * math.pi * u[1])).to(dtype)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "counter": self.counter.clone()}

    def get_state(self) -> torch.Tensor:
        """[2] int64 on the CPU: (seed, counter), as ``torch.Generator.get_state`` (checkpoint.capture_rng_state)."""
        return torch.stack([torch.tensor(self.seed), self.counter.cpu()])

    def set_state(self, state: torch.Tensor) -> None:
        """Restores ``get_state()``'s output (of a CounterRNG with the same seed)."""
        self.load_state_dict({"seed": int(state[0]), "counter": state[1]})

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"state of a CounterRNG with seed {state['seed']} cannot load into seed {self.seed}")
        self.counter.copy_(state["counter"])


Generator = Union[torch.Generator, CounterRNG, None]


def uniform(shape: Sequence[int], generator: Generator, device: torch.device,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[shape] U[0, 1) on ``device`` from a CounterRNG (on that device), a torch.Generator or torch's default."""
    if isinstance(generator, CounterRNG):
        return generator.uniform(shape, dtype)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def normal(shape: Sequence[int], generator: Generator, device: torch.device,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[shape] N(0, 1) on ``device`` from a CounterRNG, a torch.Generator or torch's default."""
    if isinstance(generator, CounterRNG):
        return generator.normal(shape, dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def permutation(n: int, generator: Generator, device: torch.device) -> torch.Tensor:
    """[n] int64 random order of 0..n-1 on ``device``: a CounterRNG's as the sort of n uniform keys, else
    ``torch.randperm`` on the generator's device."""
    if isinstance(generator, CounterRNG):
        return torch.argsort(generator.uniform((n,)))
    drawn_on = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=drawn_on).to(device)
