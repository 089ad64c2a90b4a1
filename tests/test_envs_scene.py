"""Task ids, and HumanoidBench's scenes loaded with MuJoCo 4 against the original's recorded model tables.

The recordings come from MuJoCo 3.1.6 on the same XML; the model metadata must be identical (exact
for integers and names, float64 to 1e-12 for parameters compiled from the XML).
"""

import numpy as np
import pytest

from ezm_gpu.envs import scene
from hb_fixtures import ASSETS, load_fixture, requires_shared

pytestmark = requires_shared


SENSOR_KINDS_316 = {0: "mjSENS_TOUCH", 2: "mjSENS_VELOCIMETER", 35: "mjSENS_SUBTREELINVEL"}  # fixtures README


RECORDED_TASKS = [f"h1-{t}" for t in scene.MEDIUM_TASKS] + [f"h1hand-{t}" for t in scene.HARD_TASKS]


def test_task_ids():
    assert str(scene.parse_task_id("h1-walk")) == "h1-walk"
    assert scene.parse_task_id("h1-maze-v0") == scene.TaskId("h1", "maze")
    assert scene.parse_task_id("h1hand-balance_hard-v0") == scene.TaskId("h1hand", "balance_hard")
    ids = scene.valid_task_ids()
    assert ids[:14] == [f"h1-{t}" for t in scene.HARD_TASKS] and ids[14:28] == [f"h1hand-{t}" for t in scene.HARD_TASKS]
    with pytest.raises(ValueError, match=r"unknown task 'h1-fly'; valid ids .*h1-stand, h1-walk, h1-run"):
        scene.parse_task_id("h1-fly")
    with pytest.raises(ValueError, match="unknown task 'walk'"):
        scene.parse_task_id("walk")


@pytest.mark.parametrize("task", RECORDED_TASKS)
def test_model_matches_the_recorded_model(task):
    import mujoco

    z = load_fixture(task)
    m = scene.load_mj_model(task, root=ASSETS)
    for key in ("nq", "nv", "nu", "na", "nbody", "ngeom", "nsite", "njnt", "nsensor", "nsensordata"):
        assert getattr(m, key) == int(z[f"meta_{key}"]), key
    assert m.opt.timestep == float(z["meta_timestep"])
    assert (int(m.opt.integrator), int(m.opt.solver), m.opt.iterations, m.opt.ls_iterations, int(m.opt.cone)) == (
        int(z["meta_opt_integrator"]), int(z["meta_opt_solver"]), int(z["meta_opt_iterations"]),
        int(z["meta_opt_ls_iterations"]), int(z["meta_opt_cone"]))
    assert m.opt.tolerance == float(z["meta_opt_tolerance"])
    np.testing.assert_array_equal(m.key_qpos[0], z["meta_key_qpos"])
    obj = mujoco.mjtObj
    tables = [
        (obj.mjOBJ_JOINT, m.njnt, "meta_joint_names"), (obj.mjOBJ_ACTUATOR, m.nu, "meta_actuator_names"),
        (obj.mjOBJ_BODY, m.nbody, "meta_body_names"), (obj.mjOBJ_GEOM, m.ngeom, "meta_geom_names"),
        (obj.mjOBJ_SITE, m.nsite, "meta_site_names"), (obj.mjOBJ_SENSOR, m.nsensor, "meta_sensor_names"),
    ]
    for kind, count, key in tables:
        assert [mujoco.mj_id2name(m, kind, i) or "" for i in range(count)] == list(z[key]), key
    exact = {
        "meta_joint_type": m.jnt_type, "meta_joint_qposadr": m.jnt_qposadr, "meta_joint_dofadr": m.jnt_dofadr,
        "meta_joint_bodyid": m.jnt_bodyid, "meta_joint_limited": m.jnt_limited,
        "meta_actuator_trntype": m.actuator_trntype, "meta_actuator_trnid": m.actuator_trnid,
        "meta_actuator_ctrllimited": m.actuator_ctrllimited, "meta_actuator_forcelimited": m.actuator_forcelimited,
        "meta_body_parentid": m.body_parentid, "meta_geom_bodyid": m.geom_bodyid, "meta_site_bodyid": m.site_bodyid,
        "meta_sensor_adr": m.sensor_adr, "meta_sensor_dim": m.sensor_dim,
        "meta_sensor_objtype": m.sensor_objtype, "meta_sensor_objid": m.sensor_objid,
    }
    for key, value in exact.items():
        np.testing.assert_array_equal(np.asarray(value).reshape(z[key].shape), z[key], err_msg=key)
    # mjtSensor values were renumbered after MuJoCo 3.1.6: compare the sensor kinds by name.
    recorded_kinds = [SENSOR_KINDS_316[int(t)] for t in z["meta_sensor_type"]]
    assert [mujoco.mjtSensor(int(t)).name for t in m.sensor_type] == recorded_kinds
    close = {
        "meta_joint_range": m.jnt_range, "meta_actuator_gear": m.actuator_gear[:, 0],
        "meta_actuator_gainprm": m.actuator_gainprm[:, :3], "meta_actuator_biasprm": m.actuator_biasprm[:, :3],
        "meta_actuator_ctrlrange": m.actuator_ctrlrange, "meta_actuator_forcerange": m.actuator_forcerange,
        "meta_site_pos": m.site_pos,
        "meta_action_low": m.actuator_ctrlrange[:, 0].astype(np.float32),
        "meta_action_high": m.actuator_ctrlrange[:, 1].astype(np.float32),
    }
    for key, value in close.items():
        np.testing.assert_allclose(np.asarray(value, dtype=np.float64).reshape(z[key].shape), z[key], rtol=1e-12,
                                   atol=1e-12, err_msg=key)
    # Masses computed from mesh volumes (the slide's ramps) differ by ~4e-9 relative between 3.1.6 and 4.0.
    np.testing.assert_allclose(m.body_mass, z["meta_body_mass"], rtol=1e-8, atol=0, err_msg="body mass")


@pytest.mark.parametrize("task", ["h1-walk", "h1-hurdle", "h1hand-balance_hard"])
def test_warp_model_and_data(task):
    m = scene.load_mj_model(task, root=ASSETS)
    model, data = scene.put_warp(m, num_worlds=3, capacity=scene.Capacity(contacts=64, constraints=256), device="cpu")
    assert data.nworld == 3 and data.qpos.shape == (3, m.nq) and data.ctrl.shape == (3, m.nu)
    np.testing.assert_allclose(model.opt.timestep.numpy().ravel()[0], m.opt.timestep)
    with pytest.raises(ValueError, match="num_worlds must be >= 1"):
        scene.put_warp(m, num_worlds=0, capacity=scene.Capacity(64, 256), device="cpu")
