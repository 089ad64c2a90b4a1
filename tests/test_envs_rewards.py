"""Formula parity: HumanoidBench rewards/terminations recomputed from recorded inputs.

Each fixture step's recorded physics quantities (``aux_*``, ``qpos_post``/``qvel_post``,
``aux_contact_geom``, geom names) go through ``ezm_gpu.envs.rewards`` as one batch of E*T worlds (maze:
the stage recurrence over t, batch = episodes) and must reproduce the recorded ``reward``, every
``info_*`` term and ``terminated``.
"""
import pathlib

import numpy as np
import pytest
import torch

from ezm_gpu.envs import rewards as R

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "humanoidbench"
if not FIXTURES.is_dir():
    pytest.skip(f"HumanoidBench fixtures not found at {FIXTURES}", allow_module_level=True)

MEDIUM = ("stand", "walk", "run", "stair", "crawl", "pole", "slide", "hurdle", "maze")
ROBOTS = ("h1", "h1hand")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# Worst error per (env, dtype), printed at the end of the run (pytest -s) for the record.
MAX_ERR: dict[tuple[str, str], float] = {}


def _load(env: str) -> dict:
    path = FIXTURES / f"{env}-v0.npz"
    if not path.exists():
        pytest.skip(f"missing fixture {path}")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _inputs(z: dict, dtype: torch.dtype, sl=(slice(None), slice(None))) -> R.RewardInputs:
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
    )


def _sensor_check(z: dict):
    # The brief's com_velocity = sensordata[2:5] assumption: check it against the sensor table.
    names = [str(n) for n in z["meta_sensor_names"]]
    i = names.index("pelvis_subtreelinvel")
    assert int(z["meta_sensor_adr"][i]) == 2 and int(z["meta_sensor_dim"][i]) == 3


def _compare(env: str, dtype, z: dict, reward, terminated, terms):
    E, T = z["reward"].shape
    info = {k[len("info_"):] for k in z if k.startswith("info_")}
    assert set(terms) == info, f"{env}: terms {sorted(terms)} != info {sorted(info)}"
    worst = 0.0
    for name, ref in [("reward", z["reward"])] + [(k, z[f"info_{k}"]) for k in sorted(info)]:
        got = (reward if name == "reward" else terms[name]).to(torch.float64).reshape(E, T).numpy()
        err = float(np.max(np.abs(got - ref)))
        worst = max(worst, err)
        assert err <= TOL[dtype], f"{env} {dtype} {name}: max abs err {err:.3g}"
    mism = terminated.reshape(E, T).numpy() != z["terminated"]
    assert not mism.any(), f"{env} {dtype}: terminated differs at {np.argwhere(mism)[:10].tolist()}"
    MAX_ERR[(env, str(dtype))] = worst


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("task", [t for t in MEDIUM if t != "maze"])
@pytest.mark.parametrize("robot", ROBOTS)
def test_stateless_task_parity(robot, task, dtype):
    env = f"{robot}-{task}"
    z = _load(env)
    _sensor_check(z)
    consts = R.task_constants(env, z["meta_geom_names"], dtype=dtype)
    inputs = _inputs(z, dtype)
    reward, terminated, terms, state = R.compute(f"{env}-v0", inputs, consts)
    assert reward.dtype == dtype and terminated.dtype == torch.bool and reward.shape == (z["reward"].size,)
    assert state == {}
    _compare(env, dtype, z, reward, terminated, terms)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("robot", ROBOTS)
def test_maze_parity(robot, dtype):
    env = f"{robot}-maze"
    z = _load(env)
    _sensor_check(z)
    E, T = z["reward"].shape
    consts = R.task_constants(env, z["meta_geom_names"], dtype=dtype)
    np.testing.assert_array_equal(consts.maze_checkpoints.to(torch.float64).numpy(), z["meta_maze_checkpoints"])
    state = R.initial_state(env, E, dtype=dtype)
    out = {"reward": [], "terminated": [], "stage": [], "direction": [], "terms": []}
    for t in range(T):
        reward, terminated, terms, state = R.compute(env, _inputs(z, dtype, (slice(None), t)), consts, state)
        out["reward"].append(reward)
        out["terminated"].append(terminated)
        out["stage"].append(state["maze_stage"])
        out["direction"].append(state["move_direction"])
        out["terms"].append(terms)
    stack = lambda xs: torch.stack(xs, dim=1).reshape(E * T, *xs[0].shape[1:])  # noqa: E731
    terms = {k: stack([d[k] for d in out["terms"]]) for k in out["terms"][0]}
    _compare(env, dtype, z, stack(out["reward"]), stack(out["terminated"]), terms)
    np.testing.assert_array_equal(torch.stack(out["stage"], 1).numpy(), z["task_maze_stage"])
    np.testing.assert_array_equal(torch.stack(out["direction"], 1).to(torch.float64).numpy(),
                                  z["task_move_direction"])


def test_maze_stage_recurrence_covers_all_stages():
    # The recordings never get past stage 1; walk a pelvis through every checkpoint to check the
    # transitions, bonuses, directions and the cap at the last stage against HumanoidBench's rules.
    ckpt = torch.tensor(R.MAZE_CHECKPOINTS, dtype=torch.float64)
    stage = torch.zeros(1, dtype=torch.int64)
    seen = []
    for k in [0, 0, 1, 2, 3, 4, 4]:
        pelvis = ckpt[k].clone().reshape(1, 3)
        pelvis[0, 0] += 0.39  # inside the 0.4 m radius
        stage, direction, bonus = R.maze_update_stage(stage, pelvis, ckpt)
        seen.append((int(stage), direction[0].tolist(), float(bonus)))
    assert seen == [(1, [1, 0, 0], 100.0), (1, [1, 0, 0], 0.0), (2, [0, 1, 0], 200.0),
                    (3, [1, 0, 0], 300.0), (4, [0, 1, 0], 400.0), (4, [0, 1, 0], 0.0), (4, [0, 1, 0], 0.0)]
    far = torch.tensor([[10.0, 10.0, 1.0]], dtype=torch.float64)
    assert int(R.maze_update_stage(torch.tensor([2]), far, ckpt)[0]) == 2
    reset = R.reset_state({"maze_stage": torch.tensor([3, 2]), "move_direction": torch.zeros(2, 3)},
                          torch.tensor([True, False]))
    assert reset["maze_stage"].tolist() == [0, 2] and reset["move_direction"].tolist() == [[1, 0, 0], [0, 1, 0]]


def test_contact_discounts_see_the_recorded_contacts():
    # Guard against a vacuous pass: the fixtures must contain penalised contacts for at least one
    # discount term, and the padded rows must be ignored.
    z = _load("h1-hurdle")
    consts = R.task_constants("h1-hurdle", z["meta_geom_names"])
    hit = R.contact_touches(_inputs(z, torch.float64).contact_geom, consts.contact_geoms)
    assert torch.equal(hit, torch.from_numpy(z["info_wall_collision_discount"].reshape(-1) < 1))
    geoms = torch.tensor([[[-1, -1], [-1, -1]]])
    assert not R.contact_touches(geoms, torch.ones(3, dtype=torch.bool)).any()


def test_pole_discount_ignores_floor_contacts():
    # The recorded pole contacts never involve the floor, so check HumanoidBench's `0 not in pair`
    # rule on synthetic pairs: world 0 touches a pole with a robot geom, world 1 only floor-pole.
    z = _load("h1-pole")
    names = [str(n) for n in z["meta_geom_names"]]
    consts = R.task_constants("h1-pole", names)
    pole, robot = names.index("pole_r1_c1"), 5
    geoms = torch.tensor([[[robot, pole], [-1, -1]], [[0, pole], [robot, 0]]])
    assert R.contact_touches(geoms, consts.contact_geoms, consts.contact_exclude).tolist() == [True, False]
    assert int(consts.contact_geoms.sum()) == sum("pole_r" in n for n in names) > 0


def test_tolerance_matches_dm_control_definition():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 4.0], dtype=torch.float64)
    got = R.tolerance(x, bounds=(0.0, 1.0), margin=2.0)
    d = np.where(x.numpy() < 0, -x.numpy(), x.numpy() - 1.0) / 2.0
    want = np.where((x.numpy() >= 0) & (x.numpy() <= 1), 1.0, np.exp(-0.5 * (d * np.sqrt(-2 * np.log(0.1))) ** 2))
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-15)
    lin = R.tolerance(x, bounds=(1.0, np.inf), margin=1.0, sigmoid="linear", value_at_margin=0)
    assert lin.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert R.tolerance(x, bounds=(-1, 1)).tolist() == [0, 1, 1, 1, 1, 0, 0, 0]


def test_no_host_sync(monkeypatch):
    # Load everything first: the fixture plumbing itself may use host ops.
    cases = []
    for task in MEDIUM:
        env = f"h1-{task}"
        z = _load(env)
        sl = (slice(None), slice(0, 3))
        consts = R.task_constants(env, z["meta_geom_names"])
        state = R.initial_state(env, 4 * 3) if task == "maze" else None
        cases.append((env, _inputs(z, torch.float32, sl), consts, state))

    def boom(*args, **kwargs):
        raise AssertionError("host sync in reward code")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "nonzero", boom)
    monkeypatch.setattr(torch.Tensor, "nonzero", boom)
    probe = torch.ones(1)
    for sync in (probe.item, probe.tolist, lambda: bool(probe), lambda: torch.nonzero(probe)):
        with pytest.raises(AssertionError, match="host sync"):
            sync()
    for env, inputs, consts, state in cases:
        reward, terminated, terms, _ = R.compute(env, inputs, consts, state)
        assert reward.shape == terminated.shape == (12,)
    monkeypatch.undo()


def test_zz_report_max_errors():
    for (env, dtype), err in sorted(MAX_ERR.items()):
        print(f"{env:16s} {dtype:14s} max abs err {err:.3g}")
