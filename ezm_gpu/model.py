"""The EZ-M multi-task world model (``docs/algorithm.md#model``).

Modules (H = hidden, T = task embedding, A = action dims, with the release's sizes in brackets):

- task embedding ``Embedding(num_tasks, T, max_norm=1)`` [T = 128], concatenated into every module's input;
- representation: running obs normalisation, ``[obs, e] -> Linear -> LayerNorm -> Tanh`` to H [512], then
  ``num_blocks`` pre-LN residual blocks;
- dynamics: ``[s, e, a] -> LN -> Linear -> ReLU -> Linear``, residual ``s' = s + x``, residual blocks;
- reward ("parallel": reads the pre-transition state s and the action, not s'): action MLP
  ``Linear(A+T -> 64) -> LN -> Tanh``, ``[s, e, a64] -> LN -> Linear -> ReLU -> Linear``, residual,
  residual blocks, categorical head (zero-initialised last layer);
- value/policy: ``[s, e]`` -> residual blocks (width H+T) -> LN -> 5 categorical value heads and a policy
  head (zero-initialised last layer) giving TD-MPC2 tanh-Gaussian parameters;
- SimSiam-style consistency: projection ``H -> 1024 -> 1024 -> 512`` and prediction ``512 -> 1024 -> 512``.

Head MLPs have hidden layers ``Linear -> BatchNorm1d -> ReLU``: like the release, run the model in
``eval()`` mode for acting and search (BatchNorm then uses its running statistics and any batch size
works) and in ``train()`` mode for the training forward (batch statistics, batch size > 1).

Units: observations are raw env observations (normalised inside); rewards per env step and values
(discounted returns) in task reward units; actions in [-1, 1] per dim; latents are unitless.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from . import rng
from .supports import Support

__all__ = [
    "ModelConfig",
    "PRESETS",
    "ResidualBlock",
    "RunningObsNorm",
    "head_mlp",
    "EZMModel",
    "InitialInference",
    "RecurrentInference",
    "PredictionOutput",
    "policy_params",
    "sample_policy",
    "policy_log_prob",
    "scale_gradient",
    "count_parameters",
]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the EZ-M world model. Defaults are the release's hard set (``ModelConfig.hard()``)."""

    obs_dim: int = 177  # observation dims after zero-padding to the task set's max
    action_dim: int = 61  # action dims after padding to the set's max (per-task masks mark valid dims)
    num_tasks: int = 14  # rows of the task embedding table
    hidden: int = 512  # H: latent state width
    task_embed: int = 128  # T: task embedding width (renormalised to L2 norm <= 1 on lookup)
    num_blocks: int = 3  # pre-LN residual blocks in each tower (representation, dynamics, reward, value/policy)
    rep_hidden: int = 512  # inner width of the representation's residual blocks
    dyn_hidden: int = 512  # dynamics transition MLP width and inner width of its residual blocks
    act_embed: int = 64  # width of the reward tower's action MLP output
    reward_action_mlp: bool = True  # reward tower embeds [a, e] with the action MLP (spec + release yaml);
    # False feeds the raw action instead, the variant whose size equals the release's quoted parameter counts
    reward_head: tuple[int, ...] = (512, 512)  # hidden layers of the reward head MLP
    value_head: tuple[int, ...] = (512, 512)  # hidden layers of each value head MLP
    policy_head: tuple[int, ...] = (512, 512)  # hidden layers of the policy head MLP
    num_value_heads: int = 5  # value ensemble size; inference takes the min of 2 random heads
    proj_hidden: int = 1024  # projection MLP hidden width
    proj_out: int = 512  # projection output width (= prediction output width, for the cosine loss)
    pred_hidden: int = 1024  # prediction head hidden width
    support_lo: float = -299.0  # reward/value support lower end (task units)
    support_hi: float = 299.0  # reward/value support upper end (task units)
    bins: int = 51  # atoms of the reward and value supports
    value_clip: tuple[float, float] = (0.0, 1e5)  # decoded values are clipped to this range at inference
    log_std_min: float = -10.0  # TD-MPC2 policy: log_std = min + (max - min)(tanh(raw) + 1) / 2
    log_std_max: float = 2.0  # see log_std_min
    obs_norm_eps: float = 1e-5  # added to the running variance before the square root
    obs_norm_init_count: float = 1e3  # pseudo-count of the initial (mean 0, var 1) obs statistics

    def __post_init__(self):
        for name in ("obs_dim", "action_dim", "num_tasks", "hidden", "task_embed", "rep_hidden", "dyn_hidden",
                     "act_embed", "num_value_heads", "proj_hidden", "proj_out", "pred_hidden", "bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be an integer >= 1, got {value!r}")
        if self.num_blocks < 0:
            raise ValueError(f"ModelConfig.num_blocks must be >= 0, got {self.num_blocks!r}")
        if self.num_value_heads < 2:
            raise ValueError("ModelConfig.num_value_heads must be >= 2 (inference takes the min of 2 heads)")
        for name in ("reward_head", "value_head", "policy_head"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "value_clip", tuple(float(v) for v in self.value_clip))
        self.support  # validates range and bins

    @property
    def support(self) -> Support:
        """The reward and value support (shared, as in the release)."""
        return Support(self.support_lo, self.support_hi, self.bins)

    @classmethod
    def hard(cls, **overrides) -> "ModelConfig":
        """The release: 14 ``h1hand-*`` tasks, obs 177, 61 actions."""
        return dataclasses.replace(cls(obs_dim=177, action_dim=61, num_tasks=14), **overrides)

    @classmethod
    def medium(cls, **overrides) -> "ModelConfig":
        """9 ``h1-*`` tasks, obs 51, 19 actions, release sizes."""
        return dataclasses.replace(cls(obs_dim=51, action_dim=19, num_tasks=9), **overrides)

    @classmethod
    def cpu(cls, **overrides) -> "ModelConfig":
        """A small model for CPU tests and smoke runs (medium's env dims; the 51-bin supports are kept)."""
        return dataclasses.replace(cls(
            obs_dim=51, action_dim=19, num_tasks=9, hidden=128, task_embed=16, num_blocks=1, rep_hidden=128,
            dyn_hidden=128, act_embed=16, reward_head=(128,), value_head=(128,), policy_head=(128,),
            proj_hidden=256, proj_out=128, pred_hidden=256), **overrides)


PRESETS = {"hard": ModelConfig.hard, "medium": ModelConfig.medium, "cpu": ModelConfig.cpu}


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; ``scale`` x its gradient in the backward pass."""
    if scale == 1.0:
        return x
    return x * scale + x.detach() * (1.0 - scale)


def count_parameters(module: nn.Module) -> int:
    """Number of scalars in ``module.parameters()`` (buffers such as BatchNorm and obs statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


class ResidualBlock(nn.Module):
    """Pre-LN residual block IRB(d, h): ``x + Linear(h -> d)(ReLU(Linear(d -> h)(LayerNorm(x))))``; [..., d] -> [..., d]."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


def _tower(dim: int, hidden: int, num_blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(dim, hidden) for _ in range(num_blocks)])


def head_mlp(in_dim: int, hidden: Sequence[int], out_dim: int, zero_init: bool = False) -> nn.Sequential:
    """Head MLP: ``(Linear -> BatchNorm1d -> ReLU)`` per hidden layer, then a plain Linear; [B, in] -> [B, out].

    ``zero_init`` zeroes the last Linear's weight and bias, so the head starts out predicting exactly zero
    logits (a uniform categorical, i.e. decoded scalar 0 on a symmetric support) or a zero policy.
    """
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    last = nn.Linear(sizes[-1], out_dim)
    if zero_init:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class RunningObsNorm(nn.Module):
    """Observation normalisation ``(obs - mean) / sqrt(var + eps)`` with running statistics.

    The statistics are buffers (not parameters, as in the release) and change only through ``update``;
    the release updated them inside every training-mode forward, which also moved them during unrolls and
    target computations, so here the trainer decides (spec: "updated from training batches").
    """

    def __init__(self, dim: int, eps: float = 1e-5, init_count: float = 1e3):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        # float64: a float32 count stops growing past 2**24 samples, freezing the statistics.
        self.register_buffer("count", torch.tensor(float(init_count), dtype=torch.float64))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, dim] raw obs -> [B, dim] normalised obs (unitless)."""
        return (obs - self.mean) / torch.sqrt(self.var + self.eps)

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Merges the moments of a batch obs [B, dim] into the running mean/var (Chan et al. parallel update)."""
        obs = obs.reshape(-1, self.mean.shape[0]).to(torch.float64)
        n = obs.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = obs.mean(0), obs.var(0, unbiased=False)
        mean, var, count = self.mean.to(torch.float64), self.var.to(torch.float64), self.count
        total = count + n
        delta = batch_mean - mean
        new_mean = mean + delta * (n / total)
        new_var = (var * count + batch_var * n + delta.square() * (count * n / total)) / total
        self.mean.copy_(new_mean)
        self.var.copy_(new_var)
        self.count.copy_(total)


def policy_params(raw: torch.Tensor, mask: torch.Tensor, log_std_min: float = -10.0,
                  log_std_max: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """TD-MPC2 tanh-Gaussian parameters from the policy head's output.

    Args:
      raw: [B, 2A] policy head output (``mu, raw_std = chunk(2)``).
      mask: [B, A] float, 1 for the task's valid action dims, 0 for padding.
    Returns:
      mean [B, A] (pre-tanh), log_std [B, A] = min + (max - min)(tanh(raw_std) + 1) / 2.
      As in the release, the mask multiplies both halves of the head output, so padded dims get mean 0
      and log_std (min + max) / 2 (-4 with the defaults); ``sample_policy`` then zeroes them.
    """
    mu, raw_std = raw.chunk(2, dim=-1)
    mu, raw_std = mu * mask, raw_std * mask
    log_std = log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(raw_std) + 1.0)
    return mu, log_std


def sample_policy(mean: torch.Tensor, log_std: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  num_samples: Optional[int] = None, std_scale: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Actions ``tanh(mean + std_scale * exp(log_std) * eps)``, eps ~ N(0, I), masked dims set to 0.

    Args:
      mean, log_std: [B, A] from ``policy_params``.
      mask: optional [B, A] float action mask (1 valid, 0 padded).
      num_samples: None -> one action per row, [B, A]; an int k -> [B, k, A].
      std_scale: multiplies the std (the search's wider samples use 3).
      generator: torch.Generator on mean's device, for reproducible noise.
    Returns:
      [B, A] or [B, k, A] actions in (-1, 1); exactly 0 on masked dims.
    """
    shape = mean.shape if num_samples is None else (mean.shape[0], num_samples, mean.shape[1])
    eps = rng.normal(shape, generator, mean.device, mean.dtype)
    if num_samples is not None:
        mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
        mask = None if mask is None else mask.unsqueeze(1)
    action = torch.tanh(mean + std_scale * log_std.exp() * eps)
    return action if mask is None else action * mask


def policy_log_prob(action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                    mask: Optional[torch.Tensor] = None, clip: float = 0.999) -> torch.Tensor:
    """log pi(action) of the tanh-Gaussian, summed over valid dims (nats).

    Args:
      action: [B, A] or [B, k, A] in [-1, 1]; clipped to ±clip before atanh to keep it finite.
      mean, log_std: [B, A] from ``policy_params`` (broadcast over k).
      mask: optional [B, A] float mask; padded dims contribute 0.
    Returns:
      [B] or [B, k] log densities, including the tanh change of variables ``-log(1 - a^2)``.
    """
    if action.dim() == mean.dim() + 1:
        mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
        mask = None if mask is None else mask.unsqueeze(-2)
    a = action.clamp(-clip, clip)
    u = torch.atanh(a)
    normal = -0.5 * ((u - mean) / log_std.exp()).square() - log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    per_dim = normal - torch.log1p(-a.square())
    if mask is not None:
        per_dim = per_dim * mask
    return per_dim.sum(-1)


class InitialInference(NamedTuple):
    """Outputs of ``EZMModel.initial_inference`` (B = batch, A = action dims)."""

    latent: torch.Tensor  # [B, H] root latent state
    value: torch.Tensor  # [B] min of 2 random heads of the decoded, clipped values (task units)
    policy_mean: torch.Tensor  # [B, A] pre-tanh Gaussian mean, 0 on masked dims
    policy_log_std: torch.Tensor  # [B, A] log std
    value_variance: torch.Tensor  # [B] variance over the heads of the decoded, clipped values


class RecurrentInference(NamedTuple):
    """Outputs of ``EZMModel.recurrent_inference``."""

    next_latent: torch.Tensor  # [B, H] latent after the action
    reward: torch.Tensor  # [B] decoded predicted reward of (latent, action) (task units per step)
    value: torch.Tensor  # [B] min of 2 random heads of the decoded, clipped values of next_latent
    policy_mean: torch.Tensor  # [B, A] policy at next_latent
    policy_log_std: torch.Tensor  # [B, A]
    value_variance: torch.Tensor  # [B]


class PredictionOutput(NamedTuple):
    """Training-side outputs of the value/policy trunk at one latent."""

    value_logits: torch.Tensor  # [V, B, bins] logits of the V value heads
    policy_mean: torch.Tensor  # [B, A] pre-tanh mean, 0 on masked dims
    policy_log_std: torch.Tensor  # [B, A]


class EZMModel(nn.Module):
    """The EZ-M world model; see the module docstring for the architecture.

    Args:
      config: a ``ModelConfig`` (e.g. ``ModelConfig.hard()``).
      action_masks: optional [num_tasks, A] float, 1 on each task's valid action dims (valid dims first);
        default all ones. Stored as a buffer and looked up by task id.
    """

    def __init__(self, config: ModelConfig, action_masks: Optional[torch.Tensor] = None):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = c = config
        self.support = c.support
        H, T, A = c.hidden, c.task_embed, c.action_dim

        if action_masks is None:
            action_masks = torch.ones(c.num_tasks, A)
        action_masks = torch.as_tensor(action_masks, dtype=torch.float32)
        if tuple(action_masks.shape) != (c.num_tasks, A):
            raise ValueError(f"action_masks must be [num_tasks, A] = [{c.num_tasks}, {A}], "
                             f"got {tuple(action_masks.shape)}")
        self.register_buffer("action_masks", action_masks.clone())

        self.task_embedding = nn.Embedding(c.num_tasks, T, max_norm=1.0)

        self.obs_norm = RunningObsNorm(c.obs_dim, c.obs_norm_eps, c.obs_norm_init_count)
        self.rep_in = nn.Sequential(nn.Linear(c.obs_dim + T, H), nn.LayerNorm(H), nn.Tanh())
        self.rep_blocks = _tower(H, c.rep_hidden, c.num_blocks)

        self.dyn_in = nn.Sequential(nn.LayerNorm(H + T + A), nn.Linear(H + T + A, c.dyn_hidden), nn.ReLU(),
                                    nn.Linear(c.dyn_hidden, H))
        self.dyn_blocks = _tower(H, c.dyn_hidden, c.num_blocks)

        if c.reward_action_mlp:
            self.reward_action = nn.Sequential(nn.Linear(A + T, c.act_embed), nn.LayerNorm(c.act_embed), nn.Tanh())
            reward_in = H + T + c.act_embed
        else:
            self.reward_action = None
            reward_in = H + T + A
        self.reward_in = nn.Sequential(nn.LayerNorm(reward_in), nn.Linear(reward_in, H), nn.ReLU(), nn.Linear(H, H))
        self.reward_blocks = _tower(H, H, c.num_blocks)
        self.reward_head = head_mlp(H, c.reward_head, c.bins, zero_init=True)

        self.pred_blocks = _tower(H + T, H + T, c.num_blocks)
        self.pred_norm = nn.LayerNorm(H + T)
        # The release leaves the value heads at the default init (its zero-init line is commented out).
        self.value_heads = nn.ModuleList(head_mlp(H + T, c.value_head, c.bins) for _ in range(c.num_value_heads))
        self.policy_head = head_mlp(H + T, c.policy_head, 2 * A, zero_init=True)

        self.projection = nn.Sequential(
            nn.Linear(H, c.proj_hidden), nn.LayerNorm(c.proj_hidden), nn.ReLU(),
            nn.Linear(c.proj_hidden, c.proj_hidden), nn.LayerNorm(c.proj_hidden), nn.ReLU(),
            nn.Linear(c.proj_hidden, c.proj_out), nn.LayerNorm(c.proj_out))
        self.prediction_head = nn.Sequential(
            nn.Linear(c.proj_out, c.pred_hidden), nn.LayerNorm(c.pred_hidden), nn.ReLU(),
            nn.Linear(c.pred_hidden, c.proj_out))

    # ----------------------------------------------------------------------------------------- pieces

    def embed_task(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Task embeddings, [B] int64 task ids -> [B, T], each of L2 norm <= 1.

        ``max_norm`` renormalises the looked-up rows of the table in place (PyTorch semantics), outside autograd.
        """
        return self.task_embedding(task_ids)

    def action_mask(self, task_ids: torch.Tensor) -> torch.Tensor:
        """[B] task ids -> [B, A] float action masks (1 valid, 0 padded)."""
        return self.action_masks[task_ids]

    @torch.no_grad()
    def update_obs_stats(self, obs: torch.Tensor) -> None:
        """Merges a training batch of raw observations [B, obs_dim] (or [..., obs_dim]) into the running
        normalisation statistics. The only way they change: forward passes never update them."""
        self.obs_norm.update(obs)

    def represent(self, obs: torch.Tensor, task_ids: torch.Tensor,
                  task_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Representation h: raw obs [B, obs_dim], task ids [B] -> latent [B, H]."""
        e = self.embed_task(task_ids) if task_emb is None else task_emb
        x = self.rep_in(torch.cat([self.obs_norm(obs), e], dim=-1))
        return self.rep_blocks(x)

    def dynamics(self, latent: torch.Tensor, action: torch.Tensor, task_ids: torch.Tensor,
                 task_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Dynamics g: latent [B, H], action [B, A] in [-1, 1], task ids [B] -> next latent [B, H]."""
        e = self.embed_task(task_ids) if task_emb is None else task_emb
        x = latent + self.dyn_in(torch.cat([latent, e, action], dim=-1))
        return self.dyn_blocks(x)

    def reward_logits(self, latent: torch.Tensor, action: torch.Tensor, task_ids: torch.Tensor,
                      task_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reward of taking action [B, A] in the pre-transition latent [B, H] -> logits [B, bins].

        "Parallel" to the dynamics: it reads (s, a), not s', so it does not wait for the dynamics tower.
        """
        e = self.embed_task(task_ids) if task_emb is None else task_emb
        a = self.reward_action(torch.cat([action, e], dim=-1)) if self.reward_action is not None else action
        x = latent + self.reward_in(torch.cat([latent, e, a], dim=-1))
        return self.reward_head(self.reward_blocks(x))

    def predict(self, latent: torch.Tensor, task_ids: torch.Tensor,
                task_emb: Optional[torch.Tensor] = None) -> PredictionOutput:
        """Value/policy f: latent [B, H], task ids [B] -> ``PredictionOutput`` (value logits [V, B, bins],
        policy mean/log_std [B, A], masked by the task's action mask)."""
        e = self.embed_task(task_ids) if task_emb is None else task_emb
        x = self.pred_norm(self.pred_blocks(torch.cat([latent, e], dim=-1)))
        value_logits = torch.stack([head(x) for head in self.value_heads])
        mean, log_std = policy_params(self.policy_head(x), self.action_mask(task_ids),
                                      self.config.log_std_min, self.config.log_std_max)
        return PredictionOutput(value_logits, mean, log_std)

    def project(self, latent: torch.Tensor, with_prediction_head: bool = True) -> torch.Tensor:
        """SimSiam branch: latent [B, H] -> [B, proj_out].

        ``with_prediction_head=True`` (online branch, unrolled latents): prediction(projection(latent)).
        False (target branch, latents of real observations): projection(latent), detached (stop-gradient).
        """
        proj = self.projection(latent)
        return self.prediction_head(proj) if with_prediction_head else proj.detach()

    # ------------------------------------------------------------------------------------ decoding

    def decode_values(self, value_logits: torch.Tensor) -> torch.Tensor:
        """Value logits [V, B, bins] -> decoded values [V, B] clipped to ``config.value_clip`` (task units)."""
        lo, hi = self.config.value_clip
        return self.support.decode(value_logits).clamp(lo, hi)

    def reduce_values(self, values: torch.Tensor,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded values [V, B] -> (value [B], variance [B]).

        value: the min of 2 distinct heads drawn at random (one draw for the whole batch, as released; a
        pessimistic estimate against ensemble over-estimation). variance: unbiased variance over all heads.
        ``generator`` (on the values' device) makes the draw reproducible; the draw stays on device.
        """
        heads = rng.permutation(values.shape[0], generator, values.device)[:2]
        return values.index_select(0, heads).amin(0), values.var(0)

    # ----------------------------------------------------------------------------------- inference

    def initial_inference(self, obs: torch.Tensor, task_ids: torch.Tensor,
                          generator: Optional[torch.Generator] = None) -> InitialInference:
        """Root inference for the search: raw obs [B, obs_dim], task ids [B] int64 -> ``InitialInference``.

        Call under ``torch.no_grad()`` and ``eval()`` (BatchNorm running statistics). ``generator`` picks the
        2 value heads.
        """
        e = self.embed_task(task_ids)
        latent = self.represent(obs, task_ids, e)
        pred = self.predict(latent, task_ids, e)
        value, variance = self.reduce_values(self.decode_values(pred.value_logits), generator)
        return InitialInference(latent, value, pred.policy_mean, pred.policy_log_std, variance)

    def recurrent_inference(self, latent: torch.Tensor, action: torch.Tensor, task_ids: torch.Tensor,
                            generator: Optional[torch.Generator] = None) -> RecurrentInference:
        """One model step for the search: latent [B, H], action [B, A], task ids [B] -> ``RecurrentInference``.

        The reward (decoded, unclipped) belongs to (latent, action); value and policy are those of the next
        latent. A ``recurrent_fn`` for ``ezm_gpu.kernels.sampled_gumbel_search`` closes over task ids
        [B] (fixed per tree), samples child actions with ``sample_policy`` and returns
        ``(next_latent, reward, value, child_actions, child_prior_logits)``.
        """
        e = self.embed_task(task_ids)
        next_latent = self.dynamics(latent, action, task_ids, e)
        reward = self.support.decode(self.reward_logits(latent, action, task_ids, e))
        pred = self.predict(next_latent, task_ids, e)
        value, variance = self.reduce_values(self.decode_values(pred.value_logits), generator)
        return RecurrentInference(next_latent, reward, value, pred.policy_mean, pred.policy_log_std, variance)

    # ------------------------------------------------------------------------------------ training

    def initial_training(self, obs: torch.Tensor, task_ids: torch.Tensor) -> tuple[torch.Tensor, PredictionOutput]:
        """Training forward at step 0: raw obs [B, obs_dim], task ids [B] -> (latent [B, H], ``PredictionOutput``)."""
        e = self.embed_task(task_ids)
        latent = self.represent(obs, task_ids, e)
        return latent, self.predict(latent, task_ids, e)

    def recurrent_training(self, latent: torch.Tensor, action: torch.Tensor, task_ids: torch.Tensor,
                           latent_grad_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, PredictionOutput]:
        """Training unroll step: latent [B, H], action [B, A], task ids [B] ->
        (next latent [B, H], reward logits [B, bins], ``PredictionOutput`` at the next latent).

        ``latent_grad_scale`` scales the gradient that flows back through the next latent from every
        reader of it: this step's heads and, through the returned tensor, the next step's dynamics,
        reward tower and projection. EZ-M uses 0.5 (the release's hook on the unrolled state), so the
        heads of unroll step k reach the representation at 0.5^k.
        """
        e = self.embed_task(task_ids)
        next_latent = scale_gradient(self.dynamics(latent, action, task_ids, e), latent_grad_scale)
        reward_logits = self.reward_logits(latent, action, task_ids, e)
        return next_latent, reward_logits, self.predict(next_latent, task_ids, e)

    def forward(self, obs: torch.Tensor, task_ids: torch.Tensor) -> tuple[torch.Tensor, PredictionOutput]:
        """Same as ``initial_training``."""
        return self.initial_training(obs, task_ids)
