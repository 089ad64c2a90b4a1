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
    (dict(preset="huge"), r"invalid preset='huge': one of hard, medium, cpu"),
    (dict(tasks="hardest"), r"invalid tasks='hardest': a task-set name \(medium"),
    (dict(tasks=["h1-fly"]), r"unknown task ids \['h1-fly'\]; valid: "),
    (dict(tasks=[]), r"a task-set name or a non-empty list"),
    (dict(tasks=["h1-walk", "h1-walk-v0"], batch_size=512), r"each task at most once"),
    (dict(batch_size=8), r"invalid batch_size=8: at least the number of tasks \(9\)"),
    (dict(steps=-1), r"invalid steps=-1"),
    (dict(seed=-3), r"invalid seed=-3: an integer >= 0"),
    (dict(replay_ratio=0), r"invalid replay_ratio=0: a number > 0"),
    (dict(search=SearchSettings(root_wide=17)), r"invalid search.root_wide=17: between 0 and search.num_root"),
    (dict(search=SearchSettings(num_simulations=0)), r"invalid search.num_simulations=0"),
    (dict(search=SearchSettings(discount=1.5)), r"invalid search.discount=1.5"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(dataclasses.replace(TrainConfig(), **overrides))
