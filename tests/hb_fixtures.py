"""Where the shared HumanoidBench material is (``../shared`` beside the checkout) and how tests load it."""
import pathlib

import numpy as np
import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
ASSETS = SHARED / "humanoidbench"  # HumanoidBench's MJCF assets (the folder holding humanoid_bench/)
FIXTURES = SHARED / "fixtures" / "humanoidbench"  # recordings of the original, one .npz per task id
# For test modules that need both: skip them where ../shared is absent.
requires_shared = pytest.mark.skipif(not FIXTURES.is_dir() or not ASSETS.is_dir(), reason="../shared is not present")


def load_fixture(task: str) -> dict:
    """The recording of a task id ("h1-walk", "h1hand-reach") as a dict of numpy arrays."""
    with np.load(FIXTURES / f"{task}-v0.npz") as z:
        return {k: z[k] for k in z.files}
