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
    (dict(replay_ratio=0), r"invalid replay_ratio=0: a finite number > 0"),
    (dict(lr=float("nan")), r"invalid lr=nan: a finite number > 0"),
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
    assert composed.tasks == list(TASK_SETS["medium"])
    # The yaml spells out the medium preset; everything else equals TrainConfig's defaults.
    assert dataclasses.replace(composed, tasks="medium", model={}) == TrainConfig()


def test_task_set_group_lists_the_library_sets():
    assert set(config_group_options("task_set")) <= set(TASK_SETS)
    for name in config_group_options("task_set"):
        assert compose_config([f"task_set={name}"]).tasks == list(TASK_SETS[name])
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
    ("preset=huge", r"invalid preset='huge': one of cpu, hard, medium \(configs/preset/\*.yaml\)"),
    ("search=wide", r"invalid search='wide': one of ezm, small"),
    ("task_set=hardest", r"invalid task_set='hardest': one of cartpole, hard, medium"),
])
def test_bad_group_choice_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config([override])
