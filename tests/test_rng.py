"""ezm_gpu.rng.CounterRNG: the distribution of its draws, reproducibility, state, and no host reads."""
import math

import pytest
import torch

from ezm_gpu.rng import CounterRNG, normal, uniform
from host_sync import forbid_host_sync

N = 200_000


def _within(sample: torch.Tensor, mean: float, var: float, name: str) -> None:
    """Sample mean within 5 standard errors of the true mean (a false alarm about once in 3.5 million runs)."""
    se = math.sqrt(var / sample.numel())
    assert abs(float(sample.double().mean()) - mean) < 5 * se, name


def test_uniform_and_normal_moments():
    g = CounterRNG(3)
    u = g.uniform((N,))
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    _within(u, 0.5, 1 / 12, "uniform mean")
    _within((u - 0.5).square(), 1 / 12, 1 / 180, "uniform variance")  # Var((u-1/2)^2) = 1/80 - 1/144
    histogram = torch.histc(u, bins=10, min=0.0, max=1.0)
    expected = N / 10
    chi2 = float(((histogram - expected).square() / expected).sum())
    assert chi2 < 33.7  # chi-square, 9 degrees of freedom, p = 1e-4
    z = g.normal((N,))
    _within(z, 0.0, 1.0, "normal mean")
    _within(z.square(), 1.0, 2.0, "normal variance")
    assert abs(float((z.abs() < 1.0).float().mean()) - 0.6827) < 0.005  # the normal's mass within 1 sigma
    d = g.uniform((N,), torch.float64)
    assert d.dtype == torch.float64 and float(d.min()) >= 0.0 and float(d.max()) < 1.0
    assert (d * 2 ** 53 % 1 == 0).all() and (d * 2 ** 24 % 1 != 0).any()  # 53 random bits, not 24
    _within(d, 0.5, 1 / 12, "float64 uniform mean")


def test_streams_are_reproducible_and_distinct():
    a, b, c = CounterRNG(7), CounterRNG(7), CounterRNG(8)
    first = a.uniform((4, 5))
    assert torch.equal(first, b.uniform((4, 5))) and not torch.equal(first, c.uniform((4, 5)))
    assert int(a.counter) == 20 and not torch.equal(a.uniform((4, 5)), first)  # the counter moved on
    # A draw of 20 then 5 equals a draw of 25: the stream is one sequence of words.
    x, y = CounterRNG(9), CounterRNG(9)
    assert torch.equal(torch.cat([x.uniform((20,)), x.uniform((5,))]), y.uniform((25,)))
    big = CounterRNG(2 ** 40 + 5)  # seeds past 32 bits change the stream too
    assert not torch.equal(big.uniform((10,)), CounterRNG(5).uniform((10,)))


def test_state_round_trip_and_bad_input():
    g = CounterRNG(1)
    g.uniform((10,))
    state = g.state_dict()
    after = g.normal((6,))
    h = CounterRNG(1)
    h.load_state_dict(state)
    assert torch.equal(h.normal((6,)), after)
    with pytest.raises(ValueError, match="seed 1 cannot load into seed 2"):
        CounterRNG(2).load_state_dict(state)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        CounterRNG(-1)


def test_draws_read_nothing_back(monkeypatch):
    g = CounterRNG(4)
    forbid_host_sync(monkeypatch, "CounterRNG draws")
    u, z, d = g.uniform((3, 4)), g.normal((5,)), uniform((2,), g, torch.device("cpu"), torch.float64)
    monkeypatch.undo()
    assert u.shape == (3, 4) and z.shape == (5,) and d.shape == (2,) and int(g.counter) == 12 + 10 + 4


def test_helpers_take_torch_generators_too():
    expected = torch.rand((3,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(uniform((3,), torch.Generator().manual_seed(5), torch.device("cpu")), expected)
    expected = torch.randn((3,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(normal((3,), torch.Generator().manual_seed(5), torch.device("cpu")), expected)
