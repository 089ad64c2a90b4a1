"""The training configuration: defaults are valid; every bad value names its key and what is allowed."""
import dataclasses

import pytest

from ezm_gpu.config import ConfigError, SearchSettings, TrainConfig, validate


def test_defaults_resolve_the_medium_set():
    assert validate(TrainConfig()) == [f"h1-{t}" for t in ("stand", "walk", "run", "stair", "crawl", "pole",
                                                            "slide", "hurdle", "maze")]
    assert validate(TrainConfig(tasks=["h1-walk-v0", "h1-run"], batch_size=512)) == ["h1-walk", "h1-run"]


@pytest.mark.parametrize("overrides, message", [
    (dict(envs=0), r"invalid envs=0: an integer >= 1"),
    (dict(envs=4), r"invalid envs=4: at least one world per task \(9 tasks\)"),
    (dict(envs=True), r"invalid envs=True"),
    (dict(device="tpu"), r"invalid device='tpu': one of auto, cuda, cpu"),
    (dict(precision="fp16"), r"invalid precision=.fp16.: one of auto, fp32, bf16"),
    (dict(preset="huge"), r"invalid preset='huge': one of hard, medium, cpu"),
    (dict(tasks="hardest"), r"invalid tasks='hardest': a task-set name \(medium"),
    (dict(tasks=["h1-fly"]), r"unknown task ids \['h1-fly'\]; valid: "),
    (dict(tasks=[]), r"a task-set name or a non-empty list"),
    (dict(tasks=["h1-walk", "h1-walk-v0"], batch_size=512), r"each task at most once"),
    (dict(batch_size=8), r"invalid batch_size=8: at least the number of tasks \(9\)"),
    (dict(steps=-1), r"invalid steps=-1"),
    (dict(seed=-3), r"invalid seed=-3: an integer >= 0"),
    (dict(updates_per_step=0), r"invalid updates_per_step=0: a finite number > 0"),
    (dict(updates_per_step=float("inf")), r"invalid updates_per_step=inf: a finite number > 0"),
    (dict(updates_per_step=float("nan")), r"invalid updates_per_step=nan: a finite number > 0"),
    (dict(updates_per_step=True), r"invalid updates_per_step=True: a finite number > 0"),
    (dict(final_updates=-0.1), r"invalid final_updates=-0.1: a finite number >= 0"),
    (dict(final_updates=float("nan")), r"invalid final_updates=nan: a finite number >= 0"),
    (dict(final_updates=float("inf")), r"invalid final_updates=inf: a finite number >= 0"),
    (dict(lr=float("nan")), r"invalid lr=nan: a finite number > 0"),
    (dict(lr_decay_at=0.0), r"invalid lr_decay_at=0.0: a finite number > 0"),
    (dict(ema_tau=0.0), r"invalid ema_tau=0.0: a number in \(0, 1\]"),
    (dict(ema_interval=0), r"invalid ema_interval=0: an integer >= 1"),
    (dict(td_steps=0), r"invalid td_steps=0: an integer >= 1"),
    (dict(action_repeat=0), r"invalid action_repeat=0: an integer >= 1"),
    (dict(model={"hidden": 0}), r"invalid model \(preset .medium. \+ model.\*\): ModelConfig.hidden must be an integer >= 1"),
    (dict(model={"widht": 3}), r"unknown keys \[.model.widht.\]; known: "),
    (dict(model=[1]), r"invalid model=\[1\]: a mapping"),
    (dict(search=SearchSettings(root_wide=17)), r"invalid search.root_wide=17: between 0 and search.num_root"),
    (dict(search=SearchSettings(num_simulations=0)), r"invalid search.num_simulations=0"),
    (dict(search=SearchSettings(discount=1.5)), r"invalid search.discount=1.5"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(dataclasses.replace(TrainConfig(), **overrides))


# --- the hydra configuration: groups for task sets, model presets and search ---------------------------------
from ezm_gpu.envs import TASK_SETS  # noqa: E402
from ezm_gpu.model import PRESETS as MODEL_PRESETS  # noqa: E402
from ezm_gpu.train import CONFIG_GROUPS, compose_config, config_group_options  # noqa: E402


def test_default_composition_is_the_dataclass_default():
    composed = compose_config([])
    assert validate(composed) == list(TASK_SETS["medium"])
    # The preset group spells out the medium model (ezm_gpu.model.PRESETS); everything else is TrainConfig's.
    assert dataclasses.replace(composed, model={}) == TrainConfig()


def test_yaml_files_select_and_override_without_restating_defaults():
    """Every value a config file sets differs from what it would otherwise be (TrainConfig's default, the
    search's default): a file that restated a default would be a second place defining it."""
    import yaml
    from importlib import resources

    defaults = dataclasses.asdict(TrainConfig())
    root = resources.files("ezm_gpu.configs")
    train = yaml.safe_load(root.joinpath("train.yaml").read_text())
    assert set(train) == {"defaults"}
    for group in ("task_set", "search"):
        for name in config_group_options(group):
            values = yaml.safe_load(root.joinpath(group, f"{name}.yaml").read_text()) or {}
            base = defaults["search"] if group == "search" else defaults
            restated = {k: v for k, v in values.items() if base.get(k) == v}
            assert not restated, f"configs/{group}/{name}.yaml restates defaults {restated}"
    assert not root.joinpath("preset").is_dir()  # presets are ezm_gpu.model.PRESETS, registered by ezm_gpu.cli


def test_task_set_group_lists_the_library_sets():
    assert set(config_group_options("task_set")) <= set(TASK_SETS)
    for name in config_group_options("task_set"):
        assert validate(compose_config([f"task_set={name}"])) == list(TASK_SETS[name])
    cartpole = compose_config(["task_set=cartpole"])
    assert (cartpole.steps, cartpole.episode_length) == (100_000, 1000)


@pytest.mark.parametrize("preset", ["hard", "medium", "cpu"])
def test_preset_group_equals_the_model_presets(preset):
    from ezm_gpu.config import model_config

    cfg = compose_config([f"preset={preset}"])
    assert cfg.preset == preset
    assert model_config(cfg, obs_dim=7, action_dim=3, num_tasks=2) == MODEL_PRESETS[preset](
        obs_dim=7, action_dim=3, num_tasks=2)
    assert model_config(dataclasses.replace(cfg, model={}), 7, 3, 2) == MODEL_PRESETS[preset](
        obs_dim=7, action_dim=3, num_tasks=2)


def test_model_and_search_fields_override_their_group():
    from ezm_gpu.config import model_config

    cfg = compose_config(["preset=cpu", "model.hidden=64", "search=small", "search.num_simulations=4"])
    assert model_config(cfg, 5, 1, 2).hidden == 64 and model_config(cfg, 5, 1, 2).num_blocks == 1
    assert cfg.search == SearchSettings(num_simulations=4, num_root_actions=8, root_wide=6)
    assert compose_config(["search=ezm"]).search == SearchSettings()


def test_top_level_keys_do_not_collide_with_groups():
    # `envs=4096` must stay a value (a configs/envs group would turn it into a group choice).
    assert compose_config(["envs=4096", "tasks=[h1-walk,h1-run]", "tasks=cartpole"]).tasks == "cartpole"
    assert compose_config(["envs=8"]).envs == 8
    assert not set(CONFIG_GROUPS) & {f.name for f in dataclasses.fields(TrainConfig)} - {"preset", "search"}


@pytest.mark.parametrize("override, message", [
    ("preset=huge", r"invalid preset='huge': one of cpu, hard, medium \(ezm_gpu.model.PRESETS\)"),
    ("search=wide", r"invalid search='wide': one of ezm, small"),
    ("task_set=hardest", r"invalid task_set='hardest': one of cartpole, hard, medium"),
])
def test_bad_group_choice_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config([override])


# --- the update budget: a fixed number of updates per env step per task, whatever the number of worlds -------
from ezm_gpu.train import UpdatePlan, load_run_config, plan_updates  # noqa: E402


def _plan(overrides):
    cfg = compose_config(overrides)
    validate(cfg)
    return plan_updates(cfg, cfg.envs // len(cfg.tasks))  # the smallest task's worlds (make_set splits evenly)


@pytest.mark.parametrize("task_set, steps, batch", [("medium", 1_000_000, 512), ("hard", 2_000_000, 1024)])
def test_release_sets_plan_the_release_updates_at_any_number_of_worlds(task_set, steps, batch):
    """``docs/algorithm.md#update-budget``: 6e5 updates over 1M (medium) or 2M (hard) env steps per task, + 2e4 at the end."""
    plan = _plan([f"task_set={task_set}", "envs=4096"])
    assert plan.total == pytest.approx(6.2e5, rel=0.01) and plan.collection == pytest.approx(6e5, rel=0.01)
    assert compose_config([f"task_set={task_set}"]).steps == steps
    assert compose_config([f"task_set={task_set}"]).batch_size == batch
    for envs in (512, 8192):
        other = _plan([f"task_set={task_set}", f"envs={envs}"])
        assert (other.collection, other.final) == (plan.collection, plan.final)
        assert other.decisions != plan.decisions  # the same updates over a different number of decisions


def test_the_default_budget_is_the_medium_sets():
    assert (TrainConfig().updates_per_step, TrainConfig().final_updates) == (0.6, 0.0333333)
    assert plan_updates(TrainConfig(), 4096 // 9).total == 620_000


def test_the_schedule_spreads_the_plan_exactly_over_the_decisions_after_the_warm_up():
    cfg = TrainConfig(steps=1000, start_transitions=70, updates_per_step=0.37, final_updates=0.25)
    plan = plan_updates(cfg, per_task_worlds=20)  # 50 decisions, the first 4 random (4 x 20 >= 70)
    assert plan == UpdatePlan(decisions=50, random_decisions=4, collection=370, final=92)
    due = [plan.due(i) for i in range(plan.decisions + 1)]
    assert due[:5] == [0] * 5 and due[-1] == 370 and plan.total == 462
    steps = [b - a for a, b in zip(due[4:], due[5:])]  # after each of the 46 learning decisions
    assert set(steps) == {8, 9} and sum(steps) == 370  # even: 370 / 46 = 8.04
    # action repeat counts env steps: half the decisions, the same updates
    repeated = plan_updates(dataclasses.replace(cfg, action_repeat=2), per_task_worlds=20)
    assert (repeated.decisions, repeated.collection) == (25, 370)
    # a warm-up that fills the run: every collection update comes after the last decision
    late = plan_updates(dataclasses.replace(cfg, start_transitions=10_000), per_task_worlds=20)
    assert (late.random_decisions, late.due(49), late.due(50)) == (50, 0, 370)


def test_a_legacy_run_config_reads_replay_ratio_as_the_updates_it_made(tmp_path):
    from omegaconf import OmegaConf

    from ezm_gpu.config import config_to_yaml as _to_yaml

    cfg = TrainConfig(tasks=["cartpole-balance", "cartpole-swingup"], envs=64, steps=100_000, batch_size=128,
                      action_repeat=2, preset="cpu")
    values = OmegaConf.to_container(OmegaConf.create(_to_yaml(cfg)))
    del values["updates_per_step"], values["final_updates"]
    values["replay_ratio"] = 20.0  # 64 x 20 / 128 = 10 updates per decision, over 1563 - 32 decisions
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(values))
    loaded = load_run_config(tmp_path)
    assert (loaded.updates_per_step, loaded.final_updates) == (15310 / 100_000, 0.0)
    assert plan_updates(loaded, 32).due(plan_updates(loaded, 32).decisions) == 15310
    assert dataclasses.replace(loaded, updates_per_step=cfg.updates_per_step, final_updates=cfg.final_updates) == cfg


def test_replay_ratio_on_the_command_line_names_its_replacement():
    with pytest.raises(ConfigError, match="replay_ratio was replaced by updates_per_step"):
        compose_config(["replay_ratio=20"])


@pytest.mark.parametrize("overrides, given", [
    (["resume=runs/x", "envs=8"], "envs=8"),
    (["tasks=cartpole", "resume=runs/x", "search=small"], "tasks=cartpole, search=small"),
    (["resume=runs/x", "+model.hidden=4"], r"\+model.hidden=4"),
])
def test_resume_takes_no_other_keys(overrides, given):
    from ezm_gpu.train import main

    with pytest.raises(SystemExit, match=r"resume continues the run's own config \(its config.yaml\); only steps, "
                                         rf".* may change, but these keys were given: {given} \(start a new run"):
        main(overrides)
