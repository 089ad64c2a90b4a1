"""Search benchmarks: full search for B in {256, 1024, 4096}, N=32, K=16, k=2 (EZ-M's defaults).

``extra_info["tree_sims_per_s"]`` = B * N / time. Groups put the torch reference (eager, and
compiled: backend "inductor"), the Triton kernels (CUDA only) and mctx's ``gumbel_muzero_policy``
(when installed) side by side. Select and backup are
also timed alone, on a tree grown to simulation 28 (the deep end of the default schedule).

    python -m pytest benchmarks/test_search_bench.py --benchmark-columns=mean,stddev,rounds
"""
import pytest
import torch

from conftest import LATENT, TrivialModel, cuda_or_skip, roots
from ezm_gpu.kernels import SearchConfig, backup, expand, init_tree, sampled_gumbel_search, select, sequential_halving

BATCHES = [256, 1024, 4096]
NUM_ROOT = 16
CONFIG = SearchConfig(num_simulations=32, num_top_actions=16, num_child_actions=2)


def _run_search(benchmark, batch, device, backend):
    model = TrivialModel(CONFIG.num_child_actions, device)
    inputs = roots(batch, NUM_ROOT, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def search():
        out = sampled_gumbel_search(**inputs, recurrent_fn=model, config=CONFIG, backend=backend, check_finite=False)
        sync()
        return out

    search()  # warm-up: kernel compilation, allocator
    benchmark.group = f"search B={batch}"
    out = benchmark.pedantic(search, rounds=5 if batch < 4096 else 3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(batch=batch, num_simulations=CONFIG.num_simulations, device=device,
                                backend=backend, threads=torch.get_num_threads(),
                                tree_sims_per_s=batch * CONFIG.num_simulations / benchmark.stats.stats.mean)
    assert int(out.visit_counts.sum()) == batch * CONFIG.num_simulations


@pytest.mark.parametrize("backend", ["torch", "inductor"])
@pytest.mark.parametrize("batch", BATCHES)
def test_search_cpu(benchmark, batch, backend):
    _run_search(benchmark, batch, "cpu", backend)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("batch", BATCHES)
def test_search_cuda(benchmark, batch, backend):
    _run_search(benchmark, batch, cuda_or_skip(), backend)


@pytest.mark.parametrize("batch", BATCHES)
def test_search_mctx_cpu(benchmark, batch):
    """mctx's jitted gumbel_muzero_policy on the same B, N, 16 root actions and latent 8 (discrete:
    every node has 16 children where EZ-M's have k=2), for comparison."""
    jax = pytest.importorskip("jax")
    mctx = pytest.importorskip("mctx")
    jnp = jax.numpy
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (LATENT + NUM_ROOT, LATENT)) * 0.3
    wr = jax.random.normal(jax.random.PRNGKey(1), (LATENT,))

    def recurrent_fn(params, rng, action, embedding):
        nxt = jnp.tanh(jnp.concatenate([embedding, jax.nn.one_hot(action, NUM_ROOT)], 1) @ w)
        out = nxt @ wr
        return mctx.RecurrentFnOutput(reward=out, discount=jnp.full_like(out, CONFIG.discount),
                                      prior_logits=jnp.zeros((nxt.shape[0], NUM_ROOT)), value=out), nxt

    @jax.jit
    def policy(rng, embedding, value):
        root = mctx.RootFnOutput(prior_logits=jnp.zeros((embedding.shape[0], NUM_ROOT)), value=value,
                                 embedding=embedding)
        return mctx.gumbel_muzero_policy(params=None, rng_key=rng, root=root, recurrent_fn=recurrent_fn,
                                         num_simulations=CONFIG.num_simulations, max_num_considered_actions=16)

    embedding, value = jax.random.normal(key, (batch, LATENT)), jnp.zeros(batch)
    jax.block_until_ready(policy(key, embedding, value))  # compile
    benchmark.group = f"search B={batch}"
    benchmark.pedantic(lambda: jax.block_until_ready(policy(key, embedding, value)), rounds=5 if batch < 4096 else 3,
                       iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(batch=batch, device="cpu", backend="mctx (jax.jit)",
                                tree_sims_per_s=batch * CONFIG.num_simulations / benchmark.stats.stats.mean)


def _grown_tree(batch, device, upto):
    """A tree after `upto` simulations of the default search, and the selection of the next one."""
    model = TrivialModel(CONFIG.num_child_actions, device)
    inputs = roots(batch, NUM_ROOT, device)
    tree = init_tree(inputs["root_value"], inputs["root_actions"], inputs["root_prior_logits"],
                     torch.zeros(batch, NUM_ROOT, device=device), CONFIG)
    embeddings = torch.zeros(batch, CONFIG.num_simulations + 1, LATENT, device=device)
    embeddings[:, 0] = inputs["root_embedding"]
    rows = torch.arange(batch, device=device)
    for s in range(upto + 1):
        sel = select(tree, CONFIG, s, backend="torch")
        if s == upto:
            return tree, sel
        first = torch.where(sel.parent == 0, 0, NUM_ROOT + (sel.parent - 1) * CONFIG.num_child_actions)
        nxt, reward, value, children, logits = model(embeddings[rows, sel.parent.long()],
                                                     tree.edge_action[rows, (first + sel.slot).long()])
        embeddings[:, s + 1] = nxt
        expand(tree, s, sel, reward, children, logits)
        backup(tree, CONFIG, s, value, backend="torch")
        sequential_halving(tree, CONFIG, s, backend="torch")


SIM = 28  # the deepest stretch of the default schedule (3 descents)


@pytest.mark.parametrize("device, backend", [("cpu", "torch"), ("cuda", "triton"), ("cuda", "torch")])
@pytest.mark.parametrize("batch", [1024, 4096])
def test_select(benchmark, batch, device, backend):
    if device == "cuda":
        cuda_or_skip()
    tree, _ = _grown_tree(batch, device, SIM)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        sel = select(tree, CONFIG, SIM, backend=backend)
        sync()
        return sel

    benchmark.group = f"select B={batch} s={SIM}"
    benchmark(run)
    benchmark.extra_info.update(batch=batch, device=device, backend=backend, simulation=SIM)


@pytest.mark.parametrize("device, backend", [("cpu", "torch"), ("cuda", "triton"), ("cuda", "torch")])
@pytest.mark.parametrize("batch", [1024, 4096])
def test_backup(benchmark, batch, device, backend):
    if device == "cuda":
        cuda_or_skip()
    tree, sel = _grown_tree(batch, device, SIM)
    expand(tree, SIM, sel, torch.zeros(batch, device=device),
           torch.zeros(batch, CONFIG.num_child_actions, 4, device=device),
           torch.zeros(batch, CONFIG.num_child_actions, device=device))
    value = torch.randn(batch, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():  # repeated backups of the same path: same work each round
        backup(tree, CONFIG, SIM, value, backend=backend)
        sync()

    benchmark.group = f"backup B={batch} s={SIM}"
    benchmark(run)
    benchmark.extra_info.update(batch=batch, device=device, backend=backend, simulation=SIM)
