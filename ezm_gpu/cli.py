"""The command line of ``python -m ezm_gpu.train``: hydra composition of configs/, ``--help``, resume keys.

Defaults come from ``TrainConfig`` (config.py) and the model presets from ``ezm_gpu.model.PRESETS``, both
registered in hydra's config store here; the YAML files in configs/ only select groups and override.
"""
from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from typing import Optional

from .config import ConfigError, TrainConfig, config_from_dict, load_run_config
from .trainer import RESUME_CHANGES

__all__ = ["CONFIG_GROUPS", "RESUME_CHANGES", "config_group_options", "compose_config", "resume_changes", "usage"]

CONFIG_GROUPS = ("task_set", "preset", "search")  # configs/<group>/<option>.yaml; presets: model.PRESETS


def _register_defaults() -> None:
    """TrainConfig's defaults as the base node, each model preset as a ``preset`` option (hydra's store)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from .model import PRESETS

    store = ConfigStore.instance()
    defaults = OmegaConf.to_container(OmegaConf.structured(TrainConfig()))
    store.store(name="train_defaults", node=defaults)
    sized = {"obs_dim", "action_dim", "num_tasks"}  # set by the task set at run time
    for name, preset in PRESETS.items():
        fields = dataclasses.asdict(preset(obs_dim=1, action_dim=1, num_tasks=1))
        model = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if k not in sized}
        store.store(group="preset", name=name, node={"preset": name, "model": model}, package="_global_")


def config_group_options(group: str) -> list[str]:
    """The options of a config group, sorted (``preset``: the model presets; others: configs/<group>/*.yaml)."""
    if group == "preset":
        from .model import PRESETS

        return sorted(PRESETS)
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files("ezm_gpu.configs").joinpath(group).iterdir()
                  if p.name.endswith(".yaml"))


def _check_group_choices(overrides: list) -> None:
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "replay_ratio":
            raise ConfigError("replay_ratio was replaced by updates_per_step (updates per env step per task while "
                              "collecting; the task set's budget) and final_updates (updates after collection, "
                              "as a fraction of those)")
        if key in CONFIG_GROUPS and value not in config_group_options(key):
            where = "ezm_gpu.model.PRESETS" if key == "preset" else f"configs/{key}/*.yaml"
            raise ConfigError(f"invalid {key}={value!r}: one of {', '.join(config_group_options(key))} ({where})")


def compose_config(overrides: list) -> TrainConfig:
    """``configs/train.yaml`` with its groups and ``key=value`` overrides, as a TrainConfig (not yet validated)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    _check_group_choices(overrides)
    _register_defaults()
    with initialize_config_module(config_module="ezm_gpu.configs", version_base=None):
        composed = compose(config_name="train", overrides=overrides)
    return config_from_dict(OmegaConf.to_container(composed, resolve=True))


def resume_changes(overrides: list) -> Optional[dict]:
    """For ``resume=RUN_DIR key=value ...``: the changes to the run's own config, {key: value}; None when not
    resuming. Only ``RESUME_CHANGES`` may change; any other key is refused, with the run's value beside it."""
    import yaml

    keys = [override.partition("=")[0].lstrip("+~") for override in overrides]
    target = next((o.partition("=")[2] for k, o in zip(keys, overrides) if k == "resume"), None)
    if target in (None, "", "null"):
        return None
    changes = {k: yaml.safe_load(o.partition("=")[2]) for k, o in zip(keys, overrides) if k != "resume"}
    fixed = [(k, o) for k, o in zip(keys, overrides) if k != "resume" and k not in RESUME_CHANGES]
    if fixed:
        try:
            saved = dataclasses.asdict(load_run_config(pathlib.Path(target)))
        except ConfigError:  # no run there: the resume itself will say so
            saved = {}
        listed = ", ".join(o + (f" (the run's: {saved[k]})" if k in saved else "") for k, o in fixed)
        raise ConfigError(f"resume continues the run's own config (its config.yaml); only "
                          f"{', '.join(RESUME_CHANGES)} may change, but these keys were given: {listed} (start a "
                          "new run with out=... to change them)")
    return changes


def _documented_keys() -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every TrainConfig field, from its one-line comments in config.py."""
    source = inspect.getsource(TrainConfig)
    meanings = dict(re.findall(r"^    (\w+): [^\n]*?  # ([^\n]*)$", source, re.M))
    defaults = TrainConfig()
    keys = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("model", "search"):
            continue
        value = getattr(defaults, field.name)
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        keys.append((field.name, text, meanings.get(field.name, "")))
    return keys


def usage() -> str:
    """``python -m ezm_gpu.train --help``: every top-level key with its default and meaning (TrainConfig, the one
    place they are defined), the config groups and their options, examples."""
    keys = _documented_keys()
    width = max(len(f"{key}={value}") for key, value, _ in keys)
    lines = ["usage: python -m ezm_gpu.train [key=value ...] [group=option ...]", "",
             "Keys (default, meaning); nested fields as model.<field>=... and search.<field>=...:"]
    lines += [f"  {f'{key}={value}':{width}s}  {meaning}" for key, value, meaning in keys]
    lines += ["  (the task_set group sets tasks, steps, updates_per_step and the other budget keys of its set)",
              "", "Groups:"]
    lines += [f"  {group}={'|'.join(config_group_options(group))}" for group in CONFIG_GROUPS]
    lines += ["", "Examples:",
              "  python -m ezm_gpu.train envs=4096                       # EZ-M on the medium set",
              "  python -m ezm_gpu.train task_set=hard preset=hard envs=4096",
              "  python -m ezm_gpu.train task_set=cartpole preset=cpu search=small device=cpu envs=64",
              "  python -m ezm_gpu.train resume=runs/<run> steps=200000  # continue a run (here: extend it)"]
    return "\n".join(lines)
