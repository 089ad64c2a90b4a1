"""Formula parity: HumanoidBench rewards/terminations recomputed from recorded inputs.

Each fixture step's recorded physics quantities (``aux_*``, ``qpos_post``/``qvel_post``,
``aux_contact_geom``, ``task_*``, geom names) go through ``ezm_gpu.envs.rewards`` as one batch of E*T
worlds (maze: the stage recurrence over t, batch = episodes) and must reproduce the recorded ``reward``,
every ``info_*`` term and ``terminated``.
"""
import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from ezm_gpu.envs import rewards as R
from hb_fixtures import recorded_inputs

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "humanoidbench"
if not FIXTURES.is_dir():
    pytest.skip(f"HumanoidBench fixtures not found at {FIXTURES}", allow_module_level=True)

MEDIUM = ("stand", "walk", "run", "stair", "crawl", "pole", "slide", "hurdle", "maze")
HARD_ONLY = ("sit_simple", "sit_hard", "balance_simple", "balance_hard", "reach")
ROBOTS = ("h1", "h1hand")
# Recorded: every medium task for both robots, the hard-only tasks for h1hand. Maze and reach carry state.
STATELESS = ([f"{r}-{t}" for r in ROBOTS for t in MEDIUM if t != "maze"]
             + [f"h1hand-{t}" for t in HARD_ONLY if t != "reach"])
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# float32 has a 24-bit mantissa, so 1e-5 absolute is unreachable for large terms (reach's
# motion_penalty, a sum of squared joint speeds, reaches ~9e3: rounding qvel to float32 alone moves it
# by ~2e-4). In float32, terms with |ref| > 1 are held to 1e-5 relative instead.
# Worst error per (env, dtype) (float32: relative where |ref| > 1), printed at the end (pytest -s).
MAX_ERR: dict[tuple[str, str], float] = {}


def _load(env: str) -> dict:
    path = FIXTURES / f"{env}-v0.npz"
    if not path.exists():
        pytest.skip(f"missing fixture {path}")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _reach_goal(z: dict, dtype: torch.dtype, sl=(slice(None), slice(None))) -> torch.Tensor:
    """The reach goal (E, 3), one per episode, broadcast over the steps ``sl`` picks -> [worlds, 3]."""
    E, T = z["reward"].shape
    goal = np.broadcast_to(z["task_goal"][:, None, :], (E, T, 3))[sl]
    return torch.from_numpy(np.ascontiguousarray(goal)).reshape(-1, 3).to(dtype)


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
        scale = np.maximum(1.0, np.abs(ref)) if dtype == torch.float32 else 1.0
        err = float(np.max(np.abs(got - ref) / scale))
        worst = max(worst, err)
        assert err <= TOL[dtype], f"{env} {dtype} {name}: max err {err:.3g}"
    mism = terminated.reshape(E, T).numpy() != z["terminated"]
    assert not mism.any(), f"{env} {dtype}: terminated differs at {np.argwhere(mism)[:10].tolist()}"
    MAX_ERR[(env, str(dtype))] = worst


def test_task_registry():
    assert R.HARD_TASKS == MEDIUM + HARD_ONLY
    assert R.TASK_NAMES == tuple(f"{r}-{t}" for r in ROBOTS for t in R.HARD_TASKS) and len(R.TASKS) == 28
    assert R.canonical_task_name("h1hand-balance_hard-v0") == "h1hand-balance_hard"
    assert R.canonical_task_name("h1-sit_simple") == "h1-sit_simple"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("env", STATELESS)
def test_stateless_task_parity(env, dtype):
    z = _load(env)
    _sensor_check(z)
    consts = R.task_constants(env, z["meta_geom_names"], dtype=dtype)
    inputs = recorded_inputs(z, dtype)
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
        reward, terminated, terms, state = R.compute(env, recorded_inputs(z, dtype, (slice(None), t)), consts, state)
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_reach_parity(dtype):
    env = "h1hand-reach"
    z = _load(env)
    assert z["qvel_post"].shape[-1] == int(z["meta_nv"]) == 75  # the robot is the whole model
    n = z["reward"].size
    state = R.initial_state(env, n, dtype=dtype)
    assert set(state) == {"reach_goal"} and state["reach_goal"].shape == (n, 3)
    assert state["reach_goal"].dtype == dtype and not state["reach_goal"].any()
    state["reach_goal"] = _reach_goal(z, dtype)
    reward, terminated, terms, new_state = R.compute(f"{env}-v0", recorded_inputs(z, dtype), None, state)
    assert reward.dtype == dtype and set(new_state) == {"reach_goal"}
    assert new_state["reach_goal"] is state["reach_goal"]
    assert not terminated.any()
    # Both bonuses must be exercised by the recording for the test to mean something.
    assert (z["info_reward_close"] > 0).any() and (z["info_reward_close"] == 0).any()
    _compare(env, dtype, z, reward, terminated, terms)


def test_reach_state_reset_keeps_goal():
    goal = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.0, 1.5]])
    out = R.reset_state({"reach_goal": goal}, torch.tensor([True, False]))
    assert torch.equal(out["reach_goal"], goal)


def test_missing_inputs_raise():
    z = _load("h1hand-sit_simple")
    inputs = recorded_inputs(z, torch.float64, (slice(None), slice(0, 2)))
    with pytest.raises(ValueError, match="sit_hard.*chair_xpos"):
        R.compute("h1hand-sit_hard", dataclasses.replace(inputs, chair_xpos=None))
    goal = {"reach_goal": torch.zeros(8, 3, dtype=torch.float64)}
    with pytest.raises(ValueError, match="reach.*left_hand_xpos"):
        R.compute("h1-reach", dataclasses.replace(inputs, left_hand_xpos=None), None, goal)
    with pytest.raises(ValueError, match="reach.*pelvis_upright"):
        R.compute("h1-reach", dataclasses.replace(inputs, pelvis_upright=None), None, goal)
    with pytest.raises(ValueError, match="reach_goal"):
        R.compute("h1-reach", inputs, None, {})
    with pytest.raises(ValueError, match="balance_simple"):
        R.compute("h1hand-balance_simple", inputs)  # no constants
    with pytest.raises(ValueError, match="geom_names"):
        R.task_constants("h1hand-balance_hard")


@pytest.mark.parametrize("task", ["balance_simple", "balance_hard"])
def test_balance_contact_termination_on_recordings(task):
    # Not every recorded termination is a fall: some steps terminate with the root still >= 0.8 m, and
    # the contact rule alone must flag exactly those (and together with the height rule, all of them).
    env = f"h1hand-{task}"
    z = _load(env)
    consts = R.task_constants(env, z["meta_geom_names"])
    fail = R.balance_contact_fail(recorded_inputs(z, torch.float64).contact_geom, consts.sphere_geoms,
                                  consts.board_geoms, consts.floor_geoms).reshape(z["reward"].shape).numpy()
    fell = z["qpos_post"][..., 2] < 0.8
    by_contact = z["terminated"] & ~fell
    assert by_contact.any(), f"{env}: no contact-only termination recorded"
    assert fail[by_contact].all()
    np.testing.assert_array_equal(fail | fell, z["terminated"])
    names = [str(n) for n in z["meta_geom_names"]]
    for field, name in [("sphere_geoms", "pivot_sphere_collision"), ("board_geoms", "stand_board_collision"),
                        ("floor_geoms", names[0])]:
        mask = getattr(consts, field)
        assert mask.shape == (len(names),) and int(mask.sum()) == 1 and bool(mask[names.index(name)])


def test_balance_contact_rule_branches():
    z = _load("h1hand-balance_hard")
    names = [str(n) for n in z["meta_geom_names"]]
    consts = R.task_constants("h1hand-balance_hard", names)
    sphere, board, floor = names.index("pivot_sphere_collision"), names.index("stand_board_collision"), 0
    # A collision geom of the left foot (body ``left_ankle_link``; the robot's geoms are unnamed).
    bodies = [str(b) for b in z["meta_body_names"]]
    foot = int(np.flatnonzero(z["meta_geom_bodyid"] == bodies.index("left_ankle_link"))[-1])
    pad = [-1, -1]
    worlds = {
        "sphere-robot": ([[foot, sphere], pad], True),
        "sphere-floor": ([[sphere, floor], pad], False),
        "floor-sphere": ([[floor, sphere], pad], False),
        "sphere-board": ([[board, sphere], pad], False),
        "floor-foot": ([[floor, foot], pad], True),
        "board-foot": ([[board, foot], [foot, board]], False),
        "padding": ([pad, pad], False),
        "allowed+robot": ([[sphere, board], [sphere, foot]], True),
    }
    geoms = torch.tensor([pairs for pairs, _ in worlds.values()])
    got = R.balance_contact_fail(geoms, consts.sphere_geoms, consts.board_geoms, consts.floor_geoms)
    assert dict(zip(worlds, got.tolist())) == {k: v for k, (_, v) in worlds.items()}
    # Through the task too: a standing root (z = 1.2) terminates only on the contact branches.
    n = len(worlds)
    inputs = R.RewardInputs(
        head_z=torch.full((n,), 2.0), left_foot_z=torch.zeros(n), right_foot_z=torch.zeros(n),
        torso_upright=torch.ones(n), com_velocity=torch.zeros(n, 3), actuator_force=torch.zeros(n, 61),
        pelvis_xpos=torch.zeros(n, 3), pelvis_xquat=torch.zeros(n, 4), imu_xpos=torch.zeros(n, 3),
        qpos=torch.zeros(n, 90).index_fill(1, torch.tensor([2]), 1.2), qvel=torch.zeros(n, 87),
        contact_geom=geoms)
    _, terminated, _, _ = R.compute("h1hand-balance_hard", inputs, consts)
    assert terminated.tolist() == [v for _, v in worlds.values()]


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
    hit = R.contact_touches(recorded_inputs(z, torch.float64).contact_geom, consts.contact_geoms)
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
    sl = (slice(None), slice(0, 3))
    for env in [f"h1-{t}" for t in MEDIUM] + [f"h1hand-{t}" for t in HARD_ONLY]:
        z = _load(env)
        consts = R.task_constants(env, z["meta_geom_names"])
        state = R.initial_state(env, 4 * 3, dtype=torch.float32)
        if "reach_goal" in state:
            state["reach_goal"] = _reach_goal(z, torch.float32, sl)
        cases.append((env, recorded_inputs(z, torch.float32, sl), consts, state))

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
