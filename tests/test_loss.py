"""The EZ-M loss on tiny hand-computed cases, and its gradient scaling."""
import math

import pytest
import torch

from ezm_gpu.loss import (LossWeights, UnrollPredictions, UnrollTargets, consistency_loss, cross_entropy, ezm_loss,
                          scale_gradient, value_loss)
from ezm_gpu.supports import Support

SUPPORT = Support(lo=-1.0, hi=1.0, bins=3)  # atoms h(-1), 0, h(1): -1, 0 and 1 are one-hot targets
LOG3 = math.log(3.0)


def _case(steps=1, mask=1.0, is_weight=1.0, requires_grad=False):
    pred = UnrollPredictions(
        value_logits=torch.zeros(steps + 1, 2, 1, 3), reward_logits=torch.zeros(steps, 1, 3),
        policy_log_prob=torch.tensor([[-1.0], [-2.0], [-3.0]][:steps + 1], requires_grad=requires_grad),
        entropy=torch.tensor([[0.5], [0.25], [0.125]][:steps + 1]),
        projection=torch.tensor([[[1.0, 0.0]]] * steps), target_projection=torch.tensor([[[1.0, 1.0]]] * steps))
    target = UnrollTargets(value=torch.tensor([[0.0], [1.0], [-1.0]][:steps + 1]), reward=torch.ones(steps, 1),
                           mask=torch.full((steps, 1), mask), is_weight=torch.tensor([is_weight]))
    return pred, target


def test_terms_by_hand():
    assert float(cross_entropy(torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))) == pytest.approx(LOG3)
    assert float(value_loss(torch.zeros(2, 1, 3), torch.tensor([1.0]), SUPPORT)) == pytest.approx(0.5 * LOG3)
    assert float(consistency_loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))) == pytest.approx(-0.5 ** 0.5)
    assert float(consistency_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0]))) == 0.0


def test_whole_loss_by_hand():
    # Uniform logits everywhere: every CE is log 3 against one-hot targets. Path-consistency target:
    # decoded reward 0 + gamma * decoded value 0 = 0. Consistency: -cos((1,0),(1,1)) = -1/sqrt(2).
    expected = (1.0 * LOG3  # reward CE
                + 0.5 * (0.5 * LOG3 + 0.5 * LOG3)  # value, steps 0 and 1 (each 0.5 * mean-head CE)
                + 5.0 * -(0.5 ** 0.5)  # consistency
                + 1.0 * (1.0 + 2.0)  # -log pi(a*) at steps 0 and 1
                + 0.005 * (0.5 + 0.25)  # entropy (release sign)
                + 0.5 * (0.5 * LOG3))  # path consistency at step 0
    pred, target = _case()
    loss, terms = ezm_loss(pred, target, SUPPORT, discount=0.99)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(terms["total"]) == pytest.approx(expected, rel=1e-6)
    assert float(terms["path_consistency"]) == pytest.approx(0.5 * LOG3, rel=1e-6)
    bonus, _ = ezm_loss(pred, target, SUPPORT, discount=0.99, entropy_bonus=True)
    assert float(bonus) == pytest.approx(expected - 2 * 0.005 * 0.75, rel=1e-6)
    weighted, _ = ezm_loss(*_case(is_weight=2.0), SUPPORT, discount=0.99)
    assert float(weighted) == pytest.approx(2 * expected, rel=1e-6)


def test_mask_keeps_only_step_zero():
    loss, _ = ezm_loss(*_case(mask=0.0), SUPPORT, discount=0.99)
    assert float(loss) == pytest.approx(0.5 * 0.5 * LOG3 + 1.0 + 0.005 * 0.5, rel=1e-6)


def test_weights_change_the_loss():
    pred, target = _case()
    base, _ = ezm_loss(pred, target, SUPPORT, 0.99)
    no_policy, _ = ezm_loss(pred, target, SUPPORT, 0.99, LossWeights(policy=0.0))
    assert float(base - no_policy) == pytest.approx(3.0, rel=1e-6)


def test_gradient_is_scaled_by_one_over_k():
    pred, target = _case(steps=2, requires_grad=True)
    loss, _ = ezm_loss(pred, target, SUPPORT, 0.99)
    loss.backward()
    # d/d log pi = -w_p * IS / B, times 1/K = 1/2.
    assert pred.policy_log_prob.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, -0.5])


def test_scale_gradient():
    x = torch.tensor(3.0, requires_grad=True)
    y = scale_gradient(x, 0.5)
    assert float(y) == 3.0
    (y ** 2).backward()
    assert float(x.grad) == pytest.approx(0.5 * 2 * 3.0)


def test_consistency_target_gets_no_gradient():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    t = torch.tensor([2.0, 1.0], requires_grad=True)
    consistency_loss(p, t).backward()
    assert t.grad is None and p.grad is not None
