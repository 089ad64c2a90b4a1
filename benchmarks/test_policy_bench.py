"""mctx's discrete policies, ours against mctx's jitted ones on this CPU (and ours on CUDA when present).

Workload: B trees, A actions (32 or 64), N = 32 simulations, one model on both sides: a tanh layer over
[latent 8, one-hot action], reward = value = a linear read-out, prior logits = a linear map of the latent
(so priors differ per node), discount 0.997. Ours runs the torch reference on CPU (the Triton kernels on
CUDA); mctx runs under jax.jit with compilation excluded by a warm-up round. ``extra_info["tree_sims_per_s"]``
= B · N / time.

Run mctx and ours in separate processes: in one process, torch's OpenMP workers keep spinning after
torch's ops and slow XLA's threads down (mctx measured 2-3x slower that way on this VM):

    cd benchmarks && python -m pytest test_policy_bench.py -k mctx --benchmark-columns=mean,min,rounds
    cd benchmarks && python -m pytest test_policy_bench.py -k "not mctx" --benchmark-columns=mean,min,rounds
"""
import pytest
import torch

from conftest import LATENT, cuda_or_skip
from ezm_gpu import kernels

BATCHES = [256, 1024, 4096, 16384]
ACTIONS = [32, 64]
NUM_SIMULATIONS = 32
POLICIES = ["gumbel_muzero_policy", "muzero_policy"]


def _weights(num_actions: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(LATENT + num_actions, LATENT, generator=g) * 0.3, torch.randn(LATENT, generator=g),
            torch.randn(LATENT, num_actions, generator=g) * 0.5, torch.randn(4, LATENT, generator=g))


def _rounds(batch: int) -> int:
    return 5 if batch <= 1024 else 3 if batch <= 4096 else 2


def _record(benchmark, batch, num_actions, policy, backend, device):
    benchmark.extra_info.update(batch=batch, num_actions=num_actions, num_simulations=NUM_SIMULATIONS, policy=policy,
                                backend=backend, device=device, threads=torch.get_num_threads(),
                                tree_sims_per_s=batch * NUM_SIMULATIONS / benchmark.stats.stats.mean)


def _ours(benchmark, policy, batch, num_actions, device, backend=None):
    w, wr, wp, _ = (t.to(device) for t in _weights(num_actions))
    eye = torch.eye(num_actions, device=device)

    def recurrent_fn(embedding, action):
        nxt = torch.tanh(torch.cat([embedding, eye[action]], 1) @ w)
        out = nxt @ wr
        return kernels.RecurrentFnOutput(reward=out, discount=torch.full_like(out, 0.997), prior_logits=nxt @ wp,
                                         value=out), nxt

    g = torch.Generator(device=device).manual_seed(1)
    embedding = torch.randn(batch, LATENT, generator=g, device=device)
    root = kernels.RootFnOutput(prior_logits=embedding @ wp, value=embedding @ wr, embedding=embedding)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        out = getattr(kernels, policy)(root, recurrent_fn, NUM_SIMULATIONS, generator=g, backend=backend)
        sync()
        return out

    run()  # warm-up: kernel compilation (Triton, torch.compile), allocator
    benchmark.group = f"{policy} A={num_actions} B={batch}"
    out = benchmark.pedantic(run, rounds=_rounds(batch), iterations=1, warmup_rounds=0)
    assert int(out.search_tree.node_visits[:, 0].min()) == NUM_SIMULATIONS + 1
    _record(benchmark, batch, num_actions, policy, backend or ("torch" if device == "cpu" else "triton"), device)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("num_actions", ACTIONS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", ["torch", "inductor"])
def test_policy_cpu(benchmark, policy, num_actions, batch, backend):
    _ours(benchmark, policy, batch, num_actions, "cpu", backend)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("num_actions", ACTIONS)
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_cuda(benchmark, policy, num_actions, batch):
    _ours(benchmark, policy, batch, num_actions, cuda_or_skip())


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("num_actions", ACTIONS)
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_mctx_cpu(benchmark, policy, num_actions, batch):
    jax = pytest.importorskip("jax")
    mctx = pytest.importorskip("mctx")
    jnp = jax.numpy
    w, wr, wp, _ = (jnp.asarray(t.numpy()) for t in _weights(num_actions))

    def recurrent_fn(params, rng_key, action, embedding):
        nxt = jnp.tanh(jnp.concatenate([embedding, jax.nn.one_hot(action, num_actions)], 1) @ w)
        out = nxt @ wr
        return mctx.RecurrentFnOutput(reward=out, discount=jnp.full_like(out, 0.997), prior_logits=nxt @ wp,
                                      value=out), nxt

    @jax.jit
    def run(key, embedding):
        root = mctx.RootFnOutput(prior_logits=embedding @ wp, value=embedding @ wr, embedding=embedding)
        return getattr(mctx, policy)(params=(), rng_key=key, root=root, recurrent_fn=recurrent_fn,
                                     num_simulations=NUM_SIMULATIONS)

    key = jax.random.PRNGKey(1)
    embedding = jax.random.normal(key, (batch, LATENT))
    jax.block_until_ready(run(key, embedding))  # compile
    benchmark.group = f"{policy} A={num_actions} B={batch}"
    benchmark.pedantic(lambda: jax.block_until_ready(run(key, embedding)), rounds=_rounds(batch), iterations=1,
                       warmup_rounds=0)
    _record(benchmark, batch, num_actions, policy, "mctx (jax.jit)", "cpu")
