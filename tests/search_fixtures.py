"""Loading and replaying the recorded EZ-M tree cases of ``../shared/fixtures/search``."""
from __future__ import annotations

import pathlib

import numpy as np
import torch

from ezm_gpu.kernels import SearchConfig

FIXTURE_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "search"
FIXTURES = sorted(FIXTURE_DIR.glob("*.npz"))


def load(path) -> dict:
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def config_of(case: dict) -> SearchConfig:
    return SearchConfig(
        num_simulations=int(case["N"]), num_top_actions=int(case["m0"]), num_child_actions=int(case["k"]),
        discount=float(case["discount"]), c_visit=float(case["c_visit"]), c_scale=float(case["c_scale"]),
        value_delta=float(case["value_delta"]))


class ReplayModel:
    """recurrent_fn replaying a recorded case; the embedding of a node is its index (D = 1).

    Records, per simulation, the (parent, slot) each tree asked for, recovered from the embedding and
    the action handed in, so a test can compare every selection with the original's.
    """

    def __init__(self, case: dict):
        self.case, self.simulation = case, 0
        self.parents, self.slots = [], []

    def __call__(self, embedding: torch.Tensor, action: torch.Tensor):
        case, s = self.case, self.simulation
        parent = embedding[:, 0].round().long()
        root_actions = torch.from_numpy(case["root_actions"])  # [B, K, A]
        child_actions = torch.from_numpy(case["leaf_child_actions"])  # [N, B, k, A]
        slots = []
        for b in range(embedding.shape[0]):  # test-side bookkeeping, not the search
            p = int(parent[b])
            candidates = root_actions[b] if p == 0 else child_actions[p - 1, b]
            slots.append(int(torch.nonzero((candidates == action[b]).all(-1))[0, 0]))
        self.parents.append(parent.tolist())
        self.slots.append(slots)
        self.simulation += 1
        batch = embedding.shape[0]
        return (torch.full((batch, 1), s + 1.0), torch.from_numpy(case["leaf_reward"][s]),
                torch.from_numpy(case["leaf_value"][s]), torch.from_numpy(case["leaf_child_actions"][s]),
                torch.from_numpy(case["leaf_child_prior_logits"][s]))


def search_inputs(case: dict):
    batch = int(case["B"])
    return dict(root_embedding=torch.zeros(batch, 1), root_value=torch.from_numpy(case["root_value"]),
                root_actions=torch.from_numpy(case["root_actions"]),
                root_prior_logits=torch.from_numpy(case["root_prior_logits"]),
                gumbel=torch.from_numpy(case["gumbel"]))
