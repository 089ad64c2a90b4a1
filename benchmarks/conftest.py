"""Shared workload of the search benchmarks: a trivial model (latent 8) so tree work dominates.

Benchmarks run the real kernels: do not set TRITON_INTERPRET here. CUDA cases skip without a GPU.
"""
import os
import pathlib

import pytest
import torch

# HumanoidBench's assets for the env and train benchmarks: $EZM_HUMANOIDBENCH_ROOT, else ../shared beside
# the checkout (the project's shared copy), else the package's own resolution (cache or download).
_SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "humanoidbench"
if not os.environ.get("EZM_HUMANOIDBENCH_ROOT") and _SHARED.is_dir():
    os.environ["EZM_HUMANOIDBENCH_ROOT"] = str(_SHARED)
HUMANOIDBENCH_ROOT = os.environ.get("EZM_HUMANOIDBENCH_ROOT")

LATENT, ACTION_DIM = 8, 4  # latent 8 as the kernels issue asks; 4 action dims


class TrivialModel:
    """recurrent_fn: one tanh layer; reward = value = a linear read-out; k child actions."""

    def __init__(self, num_child: int, device: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = (torch.randn(LATENT + ACTION_DIM, LATENT, generator=g) * 0.3).to(device)
        self.wr = torch.randn(LATENT, generator=g).to(device)
        self.wc = torch.randn(LATENT, num_child * ACTION_DIM, generator=g).to(device)
        self.num_child = num_child

    def __call__(self, embedding, action):
        nxt = torch.tanh(torch.cat([embedding, action], 1) @ self.w)
        out = nxt @ self.wr
        children = torch.tanh(nxt @ self.wc).view(-1, self.num_child, ACTION_DIM)
        return nxt, out, out, children, torch.zeros(nxt.shape[0], self.num_child, device=nxt.device)


def roots(batch: int, num_root: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(root_embedding=torch.randn(batch, LATENT, generator=g).to(device),
                root_value=torch.randn(batch, generator=g).to(device),
                root_actions=(torch.rand(batch, num_root, ACTION_DIM, generator=g) * 2 - 1).to(device),
                root_prior_logits=torch.zeros(batch, num_root, device=device))


def cuda_or_skip() -> str:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return "cuda"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(torch.get_num_threads())  # the machine's cores (2 here); recorded per run
    yield


@pytest.fixture(autouse=True)
def _fresh_compile_cache():
    """Each benchmark compiles its own shapes: torch.compile keeps at most 8 variants of a function and
    silently runs the rest eagerly, which would time later "inductor" cases as eager ones."""
    torch._dynamo.reset()
    yield
