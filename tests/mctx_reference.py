"""mctx itself as the reference for ``ezm_gpu.kernels``' discrete policies: the same model on both sides.

``TableModel``: a deterministic model both JAX and torch evaluate without computing anything differently:
a node's embedding is an integer path code (code' = (code · (A + 1) + action + 1) mod T, exact in int32),
and reward, value, discount and prior logits are looked up from shared float32 tables at that code.
``run_mctx`` runs mctx's policy under jax.jit; ``run_ours`` runs ours with the same root, model and noise.

mctx's muzero selection adds 1e-7 · U(0, 1) tie-break noise; ``run_mctx`` runs it with that noise set to 0
(``jax.random.uniform`` patched while the policy is traced) because ours breaks ties by lowest action.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
mctx = pytest.importorskip("mctx")
jnp = jax.numpy
jax.config.update("jax_threefry_partitionable", False)  # as mctx's own tests (its golden trees need it)

from ezm_gpu import kernels  # noqa: E402

TABLE_SIZE = 10007  # a prime: path codes spread over the tables


@dataclasses.dataclass
class TableModel:
    """Model outputs per path code (numpy float32 tables, [T] / [T, A])."""

    reward: np.ndarray
    value: np.ndarray
    discount: np.ndarray
    prior_logits: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, num_actions: int, discount: float, terminal_fraction: float = 0.0,
               prior_scale: float = 1.0):
        discounts = np.full(TABLE_SIZE, discount, np.float32)
        discounts[rng.random(TABLE_SIZE) < terminal_fraction] = 0.0
        return cls(reward=rng.uniform(-1, 1, TABLE_SIZE).astype(np.float32),
                   value=rng.uniform(-1, 1, TABLE_SIZE).astype(np.float32),
                   discount=discounts,
                   prior_logits=(prior_scale * rng.standard_normal((TABLE_SIZE, num_actions))).astype(np.float32))

    @property
    def num_actions(self) -> int:
        return self.prior_logits.shape[1]

    def root_codes(self, batch: int) -> np.ndarray:
        return (np.arange(batch, dtype=np.int32) * 7919) % TABLE_SIZE

    # --- JAX side ---
    def mctx_root(self, batch: int):
        code = jnp.asarray(self.root_codes(batch))
        return mctx.RootFnOutput(prior_logits=jnp.asarray(self.prior_logits)[code],
                                 value=jnp.asarray(self.value)[code], embedding=code)

    def mctx_recurrent_fn(self):
        tables = {k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items()}
        a = self.num_actions

        def recurrent_fn(params, rng_key, action, embedding):
            del params, rng_key
            code = (embedding * (a + 1) + action.astype(jnp.int32) + 1) % TABLE_SIZE
            return mctx.RecurrentFnOutput(reward=tables["reward"][code], discount=tables["discount"][code],
                                          prior_logits=tables["prior_logits"][code], value=tables["value"][code]), code

        return recurrent_fn

    # --- torch side ---
    def root(self, batch: int) -> "kernels.RootFnOutput":
        code = torch.from_numpy(self.root_codes(batch)).long()
        return kernels.RootFnOutput(prior_logits=torch.from_numpy(self.prior_logits)[code],
                                    value=torch.from_numpy(self.value)[code], embedding=code)

    def recurrent_fn(self):
        tables = {k: torch.from_numpy(v) for k, v in dataclasses.asdict(self).items()}
        a = self.num_actions

        def recurrent_fn(embedding, action):
            code = (embedding * (a + 1) + action + 1) % TABLE_SIZE
            return kernels.RecurrentFnOutput(reward=tables["reward"][code], discount=tables["discount"][code],
                                             prior_logits=tables["prior_logits"][code],
                                             value=tables["value"][code]), code

        return recurrent_fn


def _zero_uniform(key, shape=(), dtype=None, minval=0.0, maxval=1.0):
    return jnp.zeros(shape, dtype or jnp.float32)


def run_mctx(policy: str, root, recurrent_fn, key, num_simulations: int, invalid_actions=None,
             qtransform=None, **kwargs):
    """mctx's ``muzero_policy`` / ``gumbel_muzero_policy`` under jax.jit; returns (PolicyOutput, noise) where
    noise holds the draws mctx made from ``key`` (dirichlet and action Gumbel, or the root Gumbel), so the
    torch side can be given the same."""
    fn = getattr(mctx, policy)
    extra = {} if qtransform is None else {"qtransform": qtransform}
    invalid = None if invalid_actions is None else jnp.asarray(invalid_actions)

    def run(key):
        return fn(params=(), rng_key=key, root=root, recurrent_fn=recurrent_fn, num_simulations=num_simulations,
                  invalid_actions=invalid, **extra, **kwargs)

    uniform = jax.random.uniform
    jax.random.uniform = _zero_uniform  # mctx's muzero tie-break noise off (traced now, inside jit)
    try:
        out = jax.jit(run)(key)
    finally:
        jax.random.uniform = uniform
    batch, num_actions = root.prior_logits.shape
    if policy == "muzero_policy":
        key, dirichlet_key, _ = jax.random.split(key, 3)
        noise = dict(noise=jax.random.dirichlet(dirichlet_key, jnp.full([num_actions], kwargs.get("dirichlet_alpha", 0.3)),
                                                shape=(batch,)),
                     action_gumbel=jax.random.gumbel(key, (batch, num_actions)))
    else:
        _, gumbel_key = jax.random.split(key)
        noise = dict(gumbel=jax.random.gumbel(gumbel_key, (batch, num_actions)))
    return out, {k: torch.from_numpy(np.array(v)).float() for k, v in noise.items()}


def ours_qtransform(name: str, kwargs: dict):
    return functools.partial(getattr(kernels, name), **kwargs)


def mctx_qtransform(name: str, kwargs: dict):
    return functools.partial(getattr(mctx, name), **kwargs)
