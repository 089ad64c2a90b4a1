"""One EZ-M update: sample → reanalyse (EMA model) → unroll the online model → loss → Adam → priorities → EMA.

Reads top to bottom like the release's ``update_weights``; every piece it calls is tested on its own.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from typing import Optional

import torch

from . import rng
from .distributed import World, all_gather_rows, average_gradients, global_batch_norm
from .ema import EMA
from .loss import LossWeights, UnrollPredictions, UnrollTargets, ezm_loss
from .model import EZMModel, policy_log_prob
from .planning import SearchSettings
from .reanalyze import Reanalysis, reanalyze
from .replay import ReplayBatch, ReplayBuffer

__all__ = ["LearnerConfig", "Learner", "unroll", "entropy_estimate"]

_LOG_2PI = math.log(2.0 * math.pi)
LATENT_GRAD_SCALE = 0.5  # the release's gradient hook on every unrolled latent


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Optimisation settings (``docs/algorithm.md#optimisation-and-ema``; release defaults)."""

    lr: float = 1e-4  # Adam learning rate
    weight_decay: float = 2e-5  # Adam (L2) weight decay
    lr_decay_at: float = 0.9  # the rate is multiplied by 0.1 after this fraction of total_updates (>= 1: never)
    total_updates: int = 300_000  # planned updates (for the decay step)
    grad_clip: float = 5.0  # max global gradient norm
    entropy_bonus: bool = False  # False: the release's sign (shrinks the std); True: TD-MPC2's bonus
    ema_tau: float = 0.01  # EMA rate of the acting/reanalysis copy
    ema_interval: int = 5  # updates between EMA steps
    weights: LossWeights = LossWeights()  # loss coefficients
    autocast_dtype: Optional[torch.dtype] = None  # e.g. torch.bfloat16: the unroll and loss under autocast
    # (mixed precision; the release uses it on GPU). Reanalysis always runs in float32: its searches rank
    # actions by value differences far below bfloat16's resolution at typical value magnitudes.


def entropy_estimate(log_std: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The release's policy-entropy term: −A · log N(ε; 0, σ) of one draw ε (pre-tanh), [B, A] -> [B].

    (TD-MPC2 scales the Gaussian log-density by the action count; with the release's sign the loss
    ``+coeff · this`` lowers the entropy.)
    """
    eps = rng.normal(log_std.shape, generator, log_std.device, log_std.dtype)
    log_density = (-0.5 * eps.square() - log_std).sum(-1) - 0.5 * _LOG_2PI * log_std.shape[-1]
    return -log_std.shape[-1] * log_density


def unroll(model: EZMModel, batch: ReplayBatch, targets: Reanalysis, unroll_steps: int,
           generator: Optional[torch.Generator] = None) -> tuple[UnrollPredictions, torch.Tensor]:
    """Unrolls the online model K steps from o_t along the stored actions.

    Returns the loss inputs and the step-0 values [V, B] (decoded, clipped) for the priorities.
    """
    tasks = batch.task_ids
    mask = model.action_mask(tasks)
    latent, prediction = model.initial_training(batch.obs[:, 0], tasks)
    value_logits, reward_logits, log_probs, entropies, projections, target_projections = [], [], [], [], [], []

    def policy_terms(prediction, step):
        value_logits.append(prediction.value_logits)
        log_probs.append(policy_log_prob(targets.best_actions[:, step], prediction.policy_mean,
                                         prediction.policy_log_std, mask))
        entropies.append(entropy_estimate(prediction.policy_log_std, generator))

    policy_terms(prediction, 0)
    first_values = model.decode_values(prediction.value_logits.detach())
    for step in range(unroll_steps):
        # ×0.5 on the tensor every reader of ŝ_{k+1} uses (its heads, projection, the next dynamics and
        # reward steps), as the release's hook: step k's heads reach the representation at 0.5^k.
        latent, step_reward_logits, prediction = model.recurrent_training(latent, batch.actions[:, step], tasks,
                                                                          latent_grad_scale=LATENT_GRAD_SCALE)
        reward_logits.append(step_reward_logits)
        projections.append(model.project(latent, with_prediction_head=True))
        with torch.no_grad():
            observed = model.represent(batch.obs[:, step + 1], tasks)
        target_projections.append(model.project(observed, with_prediction_head=False))
        policy_terms(prediction, step + 1)
    predictions = UnrollPredictions(
        value_logits=torch.stack(value_logits), reward_logits=torch.stack(reward_logits),
        policy_log_prob=torch.stack(log_probs), entropy=torch.stack(entropies),
        projection=torch.stack(projections), target_projection=torch.stack(target_projections))
    return predictions, first_values


def _capturing() -> bool:
    """A CUDA graph is being captured on the current stream."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class Learner:
    """Owns the online model, its optimiser and EMA copy; ``update`` does one training step."""

    def __init__(self, model: EZMModel, config: LearnerConfig, search: SearchSettings = SearchSettings(),
                 world: World = World()):
        """``search``: the reanalysis searches (the acting search's settings; its discount is the targets').
        ``world``: the data-parallel ranks (``ezm_gpu.distributed``); every rank's model must start identical.
        With more than one, each update is the one a single learner would make from the union of the ranks'
        batches (averaged gradients, BatchNorm and observation statistics of the union)."""
        self.model, self.config, self.search, self.world = model, config, search, world
        if world.size > 1:
            global_batch_norm(model)
        device = next(model.parameters()).device
        # Everything an update changes or reads from one update to the next lives on the device (the step
        # count, the learning rate, Adam's step counts), so that an update reads nothing from the host and
        # replays from a captured CUDA graph (ezm_gpu.graphs): a Python value would be frozen at capture.
        self.step = torch.zeros((), dtype=torch.int64, device=device)  # updates made
        self._decay_step = (int(config.lr_decay_at * config.total_updates) if config.lr_decay_at < 1
                            else torch.iinfo(torch.int64).max)  # the first update made at the low rate is this + 1
        # The fused kernel keeps Adam's step counters on the parameters' device, on CPU too. The rate is a
        # tensor the kernel reads: float32 on CUDA (its kernel reads a float), float64 on CPU (its kernel
        # computes the step in double: the same values as a Python-float rate). A model on the meta device
        # (shapes only, ezm_gpu.opcount) takes the multi-tensor Adam, which has meta kernels but no tensor rate.
        meta = device.type == "meta"
        rate = lambda lr: torch.tensor(lr, dtype=torch.float64 if device.type == "cpu" else torch.float32,  # noqa: E731
                                       device=device)
        self._low_rate = None if meta else rate(config.lr * 0.1)  # the rate after the step
        self.lr = config.lr if meta else rate(config.lr)  # the optimiser's current rate
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=config.weight_decay,
                                          fused=not meta, foreach=meta or None, capturable=device.type == "cuda")
        self._fused = not meta
        if self._fused:  # Adam's state made now (torch makes it at the first step), as its fused path makes it
            params = self.optimizer.param_groups[0]["params"]
            if any(p.dtype != torch.float32 for p in params):
                raise ValueError("the learner's Adam steps float32 parameters (one fused kernel); got "
                                 f"{sorted({str(p.dtype) for p in params})}")
            for p in params:
                self.optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=device),
                                           "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                           "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        self.ema = EMA(model, tau=config.ema_tau, interval=config.ema_interval)

    @torch.no_grad()
    def _adam_step(self) -> None:
        """One Adam step on the gradients: torch's fused kernel, called as ``Optimizer.step`` calls it for one
        device and dtype (step counts + 1, then the kernel), without the wrapper that torch.compile breaks the
        graph at (and its per-step Python work: hooks, grouping, state checks)."""
        if not self._fused:  # (meta: shapes only)
            self.optimizer.step()
            return
        group = self.optimizer.param_groups[0]
        state = [self.optimizer.state[p] for p in group["params"]]
        steps = [s["step"] for s in state]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(group["params"], [p.grad for p in group["params"]], [s["exp_avg"] for s in state],
                           [s["exp_avg_sq"] for s in state], [], steps, lr=group["lr"], beta1=group["betas"][0],
                           beta2=group["betas"][1], weight_decay=group["weight_decay"], eps=group["eps"],
                           amsgrad=False, maximize=False)

    def _set_rate(self) -> None:
        """The rate for the next update: x0.1 once ``_decay_step`` updates are made (chosen on the device), and
        low for good once low (a resumed run keeps its rate, whatever its plan's new decay count)."""
        if self._fused:  # (meta: shapes only, no schedule)
            self.lr.copy_(torch.where(self.step >= self._decay_step, self._low_rate, self.lr))

    @property
    def updates(self) -> int:
        """Updates made (a host read of ``step``: for checkpoints and logs, not the hot loop)."""
        return int(self.step)

    def update(self, replay: ReplayBuffer, generator: rng.Generator = None) -> dict[str, torch.Tensor]:
        """One update from ``replay``; returns scalar tensors for logging (no host read). The unroll K and
        the value targets' n are the replay's (its windows hold K + n transitions). ``generator``: a
        torch.Generator or, for a captured update (``ezm_gpu.graphs``), a ``rng.CounterRNG``."""
        c, unroll_steps = self.config, replay.config.unroll_steps
        batch = replay.sample(generator)
        targets = reanalyze(self.ema.copy, batch, self.search, unroll_steps, replay.config.td_steps, self.step,
                            generator)
        self.model.train()
        mixed = c.autocast_dtype is not None
        # (no autocast weight cache while a CUDA graph is captured: torch's rule for capturing autocast)
        with (torch.autocast(batch.obs.device.type, dtype=c.autocast_dtype, cache_enabled=not _capturing())
              if mixed else nullcontext()):
            predictions, first_values = unroll(self.model, batch, targets, unroll_steps, generator)
        predictions = UnrollPredictions(**{f.name: getattr(predictions, f.name).float()
                                           for f in dataclasses.fields(predictions)})  # the loss in float32
        step_targets = UnrollTargets(value=targets.value_targets.T, reward=targets.reward_targets.T,
                                     mask=batch.step_mask[:, :unroll_steps].T, is_weight=batch.weights)
        loss, terms = ezm_loss(predictions, step_targets, self.model.support, self.search.discount, c.weights,
                               c.entropy_bonus)
        for p in self.model.parameters():  # (Optimizer.zero_grad(set_to_none=True), which torch.compile skips)
            p.grad = None
        loss.backward()
        average_gradients(self.model.parameters(), self.world)
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self._adam_step()
        self.step += 1
        self._set_rate()
        priorities = (first_values.mean(0) - targets.value_targets[:, 0]).abs() + 1e-6
        replay.update_priorities(batch.indices, priorities, batch.stamps)
        self.model.update_obs_stats(all_gather_rows(batch.obs[:, 0], self.world))  # (once every task holds data)
        self.ema.update(self.model, self.step)
        terms["loss"] = loss.detach()
        return terms

    def state_dict(self) -> dict:
        """Everything ``update`` changes: {"model", "optimizer", "ema", "updates"} (checkpoint.save_checkpoint).

        The tensors are the live ones (no copy): serialise the dict, or deep-copy it, before the next update.
        The optimiser's state includes its current learning rate (after the decay step).
        """
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restores ``state_dict()``'s output into this learner (same model and learner configs)."""
        missing = {"model", "optimizer", "ema", "updates"} - set(state)
        if missing:
            raise KeyError(f"learner state lacks {sorted(missing)}; pass Learner.state_dict()'s output")
        self.model.load_state_dict(state["model"])
        # After the model: Adam's state is keyed by parameter order and cast to the parameters' device. The
        # implementation is this learner's (a checkpoint written before Adam was fused names the single-tensor
        # one); named in the saved groups, torch's loader also moves the step counts where fused Adam keeps them.
        implementation = {key: self.optimizer.param_groups[0][key] for key in ("fused", "foreach", "capturable")}
        saved = state["optimizer"]
        self.optimizer.load_state_dict({**saved, "param_groups": [{**group, **implementation}
                                                                  for group in saved["param_groups"]]})
        self.lr.fill_(float(self.optimizer.param_groups[0]["lr"]))  # the saved rate (a number or a tensor)...
        for group in self.optimizer.param_groups:  # ...in the tensor Adam reads (the loader replaced it)
            group["lr"] = self.lr
        self.ema.load_state_dict(state["ema"])
        self.step.fill_(int(state["updates"]))
        self._set_rate()
