"""EZ-M's training loss over an unroll of K steps (``docs/algorithm.md#unroll-and-loss``; the release's ``update_weights``).

Step 0 is the representation of o_t; step i+1 the dynamics unrolled with a_{t+i}. Per sample:

    L = Σ_{i<K} m_i [ w_r CE(r̂_i, r_{t+i}) + w_c (−cos(pred(proj(ŝ_{i+1})), sg proj(h(o_{t+i+1}))))
                      + w_v V(ŝ_{i+1}, z_{t+i+1}) + w_p (−log π(a*_{i+1}|ŝ_{i+1})) + w_e E_{i+1}
                      + w_v V(ŝ_i, sg(r̂_i + γ mean_heads V̂(ŝ_{i+1}))) ]
        + w_v V(ŝ_0, z_t) + w_p (−log π(a*_0|ŝ_0)) + w_e E_0

with V(·, z) = 0.5 · mean over the value heads of CE(value logits, two-hot(z)), m_i the unroll mask
(0 past the trajectory's end), E the entropy term (release: +entropy estimate, which shrinks the
policy's std; ``entropy_bonus=True``: TD-MPC2's −entropy). The batch loss is the IS-weighted mean;
its gradient is scaled by 1/K, and the unroll halves the gradient of every unrolled latent where it is
made (``EZMModel.recurrent_training(..., latent_grad_scale=0.5)``), so that step i's heads reach the
representation at 0.5^i, as the release's hook on the unrolled state does.
"""
from __future__ import annotations

import dataclasses

import torch

from .model import scale_gradient
from .supports import Support

__all__ = ["LossWeights", "UnrollPredictions", "UnrollTargets", "cross_entropy", "value_loss",
           "consistency_loss", "scale_gradient", "ezm_loss"]


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Coefficients of the loss terms (the release's humanoid_bench_state.yaml)."""

    reward: float = 1.0  # reward CE
    value: float = 0.5  # value loss (which has its own 0.5), also the path-consistency weight
    consistency: float = 5.0  # SimSiam-style latent consistency
    policy: float = 1.0  # −log π(a*)
    entropy: float = 0.005  # entropy term


@dataclasses.dataclass
class UnrollPredictions:
    """Model outputs along an unroll of K steps for B samples (V value heads, P projection width)."""

    value_logits: torch.Tensor  # [K+1, V, B, bins] value heads at ŝ_0 … ŝ_K
    reward_logits: torch.Tensor  # [K, B, bins] reward of the transition ŝ_i --a_{t+i}--> ŝ_{i+1}
    policy_log_prob: torch.Tensor  # [K+1, B] log π(a*_i | ŝ_i) of the reanalysed best action
    entropy: torch.Tensor  # [K+1, B] entropy estimate of π(·|ŝ_i) (nats)
    projection: torch.Tensor  # [K, B, P] pred(proj(ŝ_{i+1})), with gradient
    target_projection: torch.Tensor  # [K, B, P] proj(h(o_{t+i+1})) (detached here)


@dataclasses.dataclass
class UnrollTargets:
    """Targets of an unroll of K steps for B samples."""

    value: torch.Tensor  # [K+1, B] value targets z_{t+i} (task units)
    reward: torch.Tensor  # [K, B] rewards r_{t+i}
    mask: torch.Tensor  # [K, B] 1 where unroll step i (t+i -> t+i+1) lies inside the trajectory
    is_weight: torch.Tensor  # [B] importance-sampling weights


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−Σ target · log_softmax(logits) over the last dim; [..., bins] x [..., bins] -> [...]."""
    return -(torch.log_softmax(logits, dim=-1) * target).sum(-1)


def value_loss(value_logits: torch.Tensor, target: torch.Tensor, support: Support) -> torch.Tensor:
    """0.5 · mean over heads of CE(head, two-hot(target)); [V, B, bins] x [B] -> [B]."""
    return 0.5 * cross_entropy(value_logits, support.two_hot(target).to(value_logits.dtype)[None]).mean(0)


def consistency_loss(projection: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−cos(projection, sg(target)) with the release's 1e-5 norm floor; [..., P] x [..., P] -> [...]."""
    a = torch.nn.functional.normalize(projection, p=2.0, dim=-1, eps=1e-5)
    b = torch.nn.functional.normalize(target.detach(), p=2.0, dim=-1, eps=1e-5)
    return -(a * b).sum(-1)


def ezm_loss(pred: UnrollPredictions, target: UnrollTargets, support: Support, discount: float,
             weights: LossWeights = LossWeights(), entropy_bonus: bool = False,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the module docstring.

    Returns:
      loss: scalar, the IS-weighted batch mean (its gradient is scaled by 1/K).
      terms: scalar tensors for logging (batch means, before IS weighting): reward, value, consistency,
        policy, entropy, path_consistency, total.
    """
    steps = pred.reward_logits.shape[0]
    mask = target.mask.to(pred.reward_logits.dtype)  # [K, B]
    reward = (cross_entropy(pred.reward_logits, support.two_hot(target.reward).to(mask.dtype)) * mask).sum(0)
    consistency = (consistency_loss(pred.projection, pred.target_projection) * mask).sum(0)
    values = torch.stack([value_loss(pred.value_logits[i], target.value[i], support) for i in range(steps + 1)])
    step_mask = torch.cat([torch.ones_like(mask[:1]), mask])  # [K+1, B]: step 0 always counts
    value = (values * step_mask).sum(0)
    policy = (-pred.policy_log_prob * step_mask).sum(0)
    entropy = (pred.entropy * step_mask).sum(0)
    with torch.no_grad():  # path consistency: the next step's value, bootstrapped, is a fixed target
        predicted_reward = support.decode(pred.reward_logits)  # [K, B]
        next_value = support.decode(pred.value_logits[1:]).mean(1)  # [K, B], mean over heads
        path_target = predicted_reward + discount * next_value
    path = torch.stack([value_loss(pred.value_logits[i], path_target[i], support) for i in range(steps)])
    path = (path * mask).sum(0)
    per_sample = (weights.reward * reward + weights.value * value + weights.consistency * consistency
                  + weights.policy * policy + weights.entropy * (-entropy if entropy_bonus else entropy)
                  + weights.value * path)
    loss = scale_gradient((target.is_weight * per_sample).mean(), 1.0 / steps)
    terms = {"reward": reward.mean(), "value": value.mean(), "consistency": consistency.mean(),
             "policy": policy.mean(), "entropy": entropy.mean(), "path_consistency": path.mean(),
             "total": per_sample.mean()}
    return loss, {k: v.detach() for k, v in terms.items()}
