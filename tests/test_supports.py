"""Categorical supports: h, h^-1, two-hot projection and decoding (ezm_gpu.supports)."""
import math

import pytest
import torch

from ezm_gpu.supports import Support, h, h_inv


def test_h_known_values():
    # Hand-computed: h(3) = (sqrt(4) - 1) + 0.003 = 1.003; h(8) = (3 - 1) + 0.008 = 2.008;
    # h(-24) = -(5 - 1) - 0.024 = -4.024; h(0) = 0; h(299) = sqrt(300) - 1 + 0.299.
    x = torch.tensor([3.0, 8.0, -24.0, 0.0, 299.0], dtype=torch.float64)
    expected = torch.tensor([1.003, 2.008, -4.024, 0.0, math.sqrt(300.0) - 0.701], dtype=torch.float64)
    torch.testing.assert_close(h(x), expected, rtol=0, atol=1e-12)


def test_h_inv_known_values_and_exact_inverse():
    y = torch.tensor([1.003, 2.008, -4.024, 0.0], dtype=torch.float64)
    torch.testing.assert_close(h_inv(y), torch.tensor([3.0, 8.0, -24.0, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-9)
    x = torch.linspace(-1e5, 1e5, 20001, dtype=torch.float64)
    torch.testing.assert_close(h_inv(h(x)), x, rtol=1e-12, atol=1e-9)
    x32 = torch.linspace(-300.0, 300.0, 6001)
    torch.testing.assert_close(h_inv(h(x32)), x32, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("support", [Support(), Support(-20.0, 20.0, 51), Support(-500.0, 500.0, 101),
                                     Support(0.0, 10.0, 11)])
def test_round_trip_over_the_range(support):
    x = torch.linspace(support.lo, support.hi, 20001, dtype=torch.float64)
    probs = support.two_hot(x)
    assert probs.shape == (20001, support.bins)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(20001, dtype=torch.float64))
    assert ((probs > 0).sum(-1) <= 2).all()
    assert (support.decode_probs(probs) - x).abs().max() < 1e-4


def test_round_trip_float32():
    support = Support()
    x = torch.linspace(-299.0, 299.0, 20001)
    err = (support.decode_probs(support.two_hot(x)) - x).abs()
    assert (err <= 1e-4 + 2e-6 * x.abs()).all(), err.max()


def test_clipping_outside_the_range():
    support = Support()
    x = torch.tensor([-1e4, -299.0001, 299.0001, 1e4, 5e5], dtype=torch.float64)
    probs = support.two_hot(x)
    torch.testing.assert_close(probs[:2], torch.eye(51, dtype=torch.float64)[[0, 0]])
    torch.testing.assert_close(probs[2:], torch.eye(51, dtype=torch.float64)[[50, 50, 50]])
    torch.testing.assert_close(support.decode_probs(probs), torch.tensor([-299.0, -299.0, 299.0, 299.0, 299.0],
                                                                         dtype=torch.float64))


def test_value_on_an_atom_is_one_hot():
    support = Support()
    atoms = support.atoms(dtype=torch.float64)
    x = h_inv(atoms)  # the scalars sitting exactly on the atoms (including both ends)
    probs = support.two_hot(x)
    torch.testing.assert_close(probs, torch.eye(51, dtype=torch.float64), rtol=0, atol=1e-9)
    # The middle atom is h = 0 on the symmetric support: zero encodes as an exact one-hot in float64 and
    # within float32 rounding of the atom index (pos = 8.31/0.332 is not exactly 25 in float32).
    assert support.two_hot(torch.zeros((), dtype=torch.float64))[25] == 1.0
    torch.testing.assert_close(support.two_hot(torch.zeros(())), torch.eye(51)[25], rtol=0, atol=1e-5)


def test_two_hot_splits_mass_linearly_in_h_space():
    support = Support(0.0, 10.0, 11)
    atoms = support.atoms(dtype=torch.float64)
    target = 0.25 * atoms[3] + 0.75 * atoms[4]
    probs = support.two_hot(h_inv(target))
    assert probs[3].item() == pytest.approx(0.25, abs=1e-9)
    assert probs[4].item() == pytest.approx(0.75, abs=1e-9)


def test_decode_logits():
    support = Support()
    assert torch.equal(support.decode(torch.zeros(4, 51)), torch.zeros(4))  # uniform -> mean atom 0
    x = torch.tensor([-150.0, -3.0, 0.5, 42.0, 298.0], dtype=torch.float64)
    logits = torch.log(support.two_hot(x).clamp_min(1e-30))
    torch.testing.assert_close(support.decode(logits), x, rtol=0, atol=1e-4)
    with pytest.raises(ValueError):
        support.decode(torch.zeros(2, 50))


def test_atoms_and_validation():
    support = Support()
    atoms = support.atoms()
    assert atoms.shape == (51,)
    assert atoms[0].item() == pytest.approx(-(math.sqrt(300.0) - 0.701), rel=1e-6)
    assert atoms[25].item() == pytest.approx(0.0, abs=1e-6)
    assert support.step == pytest.approx(2 * (math.sqrt(300.0) - 0.701) / 50)
    with pytest.raises(ValueError):
        Support(1.0, 1.0, 51)
    with pytest.raises(ValueError):
        Support(-1.0, 1.0, 1)


def test_two_hot_of_nan_is_a_nan_row_and_infinities_clip():
    """A NaN value target (a diverged model) must give a NaN loss, never an out-of-range atom index."""
    support = Support(-10.0, 10.0, 21)
    target = support.two_hot(torch.tensor([1.0, float("nan"), float("inf"), float("-inf")]))
    assert torch.isnan(target[1]).all()
    assert torch.equal(target[0], support.two_hot(torch.tensor([1.0]))[0])
    assert target[2].argmax() == 20 and target[2].sum() == 1.0 and target[3].argmax() == 0 and target[3].sum() == 1.0
