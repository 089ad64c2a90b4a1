"""Where the shared HumanoidBench material is (``../shared`` beside the checkout) and how tests load it."""
import pathlib

import numpy as np
import pytest
import torch

from ezm_gpu.envs import rewards as R

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
ASSETS = SHARED / "humanoidbench"  # HumanoidBench's MJCF assets (the folder holding humanoid_bench/)
FIXTURES = SHARED / "fixtures" / "humanoidbench"  # recordings of the original, one .npz per task id
# For test modules that need both: skip them where ../shared is absent.
requires_shared = pytest.mark.skipif(not FIXTURES.is_dir() or not ASSETS.is_dir(), reason="../shared is not present")


def load_fixture(task: str) -> dict:
    """The recording of a task id ("h1-walk", "h1hand-reach") as a dict of numpy arrays."""
    with np.load(FIXTURES / f"{task}-v0.npz") as z:
        return {k: z[k] for k in z.files}


def recorded_inputs(z: dict, dtype: torch.dtype, sl=(slice(None), slice(None))) -> R.RewardInputs:
    """RewardInputs from recorded arrays; ``sl`` picks (episodes, steps), flattened into worlds."""

    def t(key, index=None, float_=True):
        a = z[key][sl]
        if index is not None:
            a = a[..., index]
        a = torch.from_numpy(np.ascontiguousarray(a))
        a = a.reshape(-1, *a.shape[2:]) if a.dim() >= 2 and isinstance(sl[1], slice) else a
        return a.to(dtype) if float_ else a

    return R.RewardInputs(
        head_z=t("aux_head_z"), left_foot_z=t("aux_left_foot_z"), right_foot_z=t("aux_right_foot_z"),
        torso_upright=t("aux_torso_upright"), com_velocity=t("aux_sensordata", slice(2, 5)),
        actuator_force=t("aux_actuator_force"), pelvis_xpos=t("aux_pelvis_xpos"),
        pelvis_xquat=t("aux_pelvis_xquat"), imu_xpos=t("aux_imu_xpos"), qpos=t("qpos_post"),
        qvel=t("qvel_post"), contact_geom=t("aux_contact_geom", float_=False),
        left_hand_xpos=t("aux_left_hand_xpos"), pelvis_upright=t("aux_pelvis_xmat_zz"),
        chair_xpos=t("task_chair_xpos") if "task_chair_xpos" in z else None,
    )
