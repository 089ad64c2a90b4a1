"""Small deterministic recurrent_fns for search tests (torch, any device, no host sync)."""
from __future__ import annotations

import torch


class LinearModel:
    """The model of the search fixtures' README, in torch:

    next = tanh(latent @ Ws + action @ Wa); reward = next @ wr + br; value = next @ wv + bv;
    child_actions = clip(tanh(next @ Wc), -0.999, 0.999) as [B, k, A]; child logits = next @ Wp.
    ``quantum`` > 0 rounds rewards and values to its multiples (to force exact ties).
    """

    def __init__(self, latent: int, action_dim: int, num_child: int, seed: int, reward_bias: float = 0.0,
                 value_bias: float = 0.0, prior_scale: float = 1.0, quantum: float = 0.0,
                 device: str = "cpu"):
        g = torch.Generator().manual_seed(seed)

        def draw(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(device)

        self.ws, self.wa = draw(latent, latent), draw(action_dim, latent)
        self.wr, self.wv = draw(latent), draw(latent)
        self.wc, self.wp = draw(latent, num_child * action_dim), draw(latent, num_child, scale=prior_scale)
        self.reward_bias, self.value_bias, self.quantum = reward_bias, value_bias, quantum
        self.num_child, self.action_dim = num_child, action_dim

    def _round(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x / self.quantum) * self.quantum if self.quantum > 0 else x

    def value(self, latent: torch.Tensor) -> torch.Tensor:
        return self._round(latent @ self.wv + self.value_bias)

    def __call__(self, latent: torch.Tensor, action: torch.Tensor):
        nxt = torch.tanh(latent @ self.ws + action @ self.wa)
        reward = self._round(nxt @ self.wr + self.reward_bias)
        children = torch.tanh(nxt @ self.wc).clamp(-0.999, 0.999).reshape(-1, self.num_child, self.action_dim)
        return nxt, reward, self.value(nxt), children, nxt @ self.wp


def random_roots(batch: int, num_root: int, latent: int, action_dim: int, model: LinearModel, seed: int,
                 prior_scale: float = 1.0, gumbel: bool = True, device: str = "cpu"):
    """Root inputs for a random search: embedding, value, actions, prior logits, Gumbel noise."""
    g = torch.Generator().manual_seed(seed + 1_000_003)
    embedding = torch.tanh(torch.randn(batch, latent, generator=g)).to(device)
    actions = torch.tanh(torch.randn(batch, num_root, action_dim, generator=g)).clamp(-0.999, 0.999).to(device)
    priors = (torch.randn(batch, num_root, generator=g) * prior_scale).to(device)
    noise = -torch.log(-torch.log(torch.rand(batch, num_root, generator=g).clamp(1e-6, 1 - 1e-6)))
    noise = noise.to(device) if gumbel else torch.zeros(batch, num_root, device=device)
    return dict(root_embedding=embedding, root_value=model.value(embedding), root_actions=actions,
                root_prior_logits=priors, gumbel=noise)
