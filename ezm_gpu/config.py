"""The training application's configuration: a typed structured config and its validation.

``configs/train.yaml`` fills it (hydra); every value is checked by ``validate`` before any work, and
a bad one fails with the key's dotted name and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from typing import Any, Optional

from .graphs import MODES as CAPTURES
from .learner import LearnerConfig
from .model import PRESETS as MODEL_PRESETS, ModelConfig
from .planning import SearchSettings
from .replay import ReplayConfig

__all__ = ["TrainConfig", "SearchSettings", "validate", "model_config", "ConfigError", "PRESETS", "DEVICES",
           "config_to_yaml", "config_from_dict", "load_run_config"]

PRESETS = tuple(MODEL_PRESETS)  # model presets (ezm_gpu.model.ModelConfig.<name>)
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


@dataclasses.dataclass
class TrainConfig:
    """Top-level knobs of ``python -m ezm_gpu.train`` (override as key=value).

    The one place a run's settings are defined: a default that belongs to a component (the replay's batch and
    n, the learner's rate and EMA, the search) is that component's, referenced here, never restated; the
    YAML groups (configs/) only select a task set, a model preset and a search, and override.
    """

    envs: int = 4096  # total worlds, split evenly across tasks
    tasks: Any = "medium"  # a task-set name (ezm_gpu.envs.TASK_SETS) or a list of task ids
    device: str = "auto"  # auto | cuda | cuda:N | cpu
    seed: int = 0  # seeds envs, model init, sampling
    steps: int = 1_000_000  # env steps per task
    preset: str = "medium"  # model preset: hard | medium | cpu
    out: Optional[str] = None  # run directory (default: runs/<tasks>-<timestamp>)
    resume: Optional[str] = None  # a run directory to continue from its latest checkpoint, with its config.yaml
    batch_size: int = ReplayConfig.batch_size  # samples per update; each task gets batch_size // num_tasks
    updates_per_step: float = 0.6  # updates per env step per task while collecting (release: 6e5 over 1M)
    final_updates: float = 0.0333333  # updates after the last env step, as a fraction of the collection's (1/30)
    start_transitions: int = 1000  # uniform-random actions until every task has this many
    replay_capacity: int = 1_000_000  # transitions per task
    ignore_termination: bool = True  # EZ-M's protocol; False: HumanoidBench's
    stagger_resets: bool = True  # first episodes end uniformly over 1..episode_length (no synchronised waves)
    episode_length: int = 500  # training episode length; 1000 once past 40% or saturated (curriculum)
    eval_interval: int = 5000  # updates between evaluations
    eval_steps: int = 1000  # length of an evaluation episode
    eval_episodes: int = 1  # evaluation episodes per task, run side by side; the score is their mean (release: 1)
    checkpoint_interval: int = 1000  # updates between checkpoints
    log_interval: int = 100  # updates between log lines
    checkpoint_replay: bool = True  # checkpoints hold the replay (exact resume); false: smaller, resume refills it
    lr: float = LearnerConfig.lr  # Adam learning rate (x0.1 once lr_decay_at of the planned updates are done)
    lr_decay_at: float = LearnerConfig.lr_decay_at  # fraction of the planned updates before the x0.1 step (>= 1: none)
    ema_tau: float = LearnerConfig.ema_tau  # EMA rate of the acting/reanalysis copy (release)
    ema_interval: int = LearnerConfig.ema_interval  # updates between EMA steps (release)
    td_steps: int = ReplayConfig.td_steps  # n of the n-step value targets (release: 5)
    action_repeat: int = 1  # env steps per agent decision (release: 1; `steps` counts env steps)
    precision: str = "auto"  # gradient step: auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    capture: str = "off"  # hot loop captured once, replayed: off | cuda (CUDA graphs) | trace (torch.fx stand-in, any device)
    world_size: int = 1  # data-parallel ranks (set by torchrun, recorded for resume; not a command-line choice)
    model: dict = dataclasses.field(default_factory=dict)  # ModelConfig fields over the preset
    search: SearchSettings = dataclasses.field(default_factory=SearchSettings)  # acting/reanalysis search


def _fail(key: str, value, allowed: str):
    raise ConfigError(f"invalid {key}={value!r}: {allowed}")


def _positive_int(cfg, key: str, minimum: int = 1):
    value = getattr(cfg, key.split(".")[-1])
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, f"an integer >= {minimum}")


def _finite_number(cfg, key: str, zero_allowed: bool):
    value = getattr(cfg, key)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value == float("inf")
            or not (value >= 0 if zero_allowed else value > 0)):
        _fail(key, value, "a finite number >= 0" if zero_allowed else "a finite number > 0")


def model_config(cfg: TrainConfig, obs_dim: int, action_dim: int, num_tasks: int):
    """The ``ModelConfig`` of ``cfg.preset`` with ``cfg.model``'s fields over it, sized for a task set.

    Raises ConfigError naming ``model.<field>`` for an unknown field or a value ModelConfig rejects.
    """
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"obs_dim", "action_dim", "num_tasks"}
    fields = dict(cfg.model or {})
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown keys {['model.' + k for k in unknown]}; known: "
                          + ", ".join("model." + k for k in sorted(known)))
    try:
        return MODEL_PRESETS[cfg.preset](obs_dim=obs_dim, action_dim=action_dim, num_tasks=num_tasks, **fields)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid model (preset {cfg.preset!r} + model.*): {error}") from None


def _model_config(cfg: TrainConfig) -> None:
    if cfg.preset not in PRESETS:
        _fail("preset", cfg.preset, "one of " + ", ".join(PRESETS))
    if not isinstance(cfg.model, dict):
        _fail("model", cfg.model, "a mapping of ModelConfig fields (model.hidden=256 ...)")
    model_config(cfg, obs_dim=1, action_dim=1, num_tasks=1)


def _canonical_task(task: str) -> Optional[str]:
    """A task id in its canonical form ("h1-walk-v0" -> "h1-walk", envs' one parser); None if unknown."""
    from .envs import parse_task_id

    try:
        return str(parse_task_id(task))
    except (ValueError, TypeError):
        return None


def validate(cfg: TrainConfig, task_sets: Optional[dict] = None, known_tasks: Optional[set] = None) -> list[str]:
    """Checks every value; returns the resolved task list. Raises ConfigError naming the bad key.

    Args:
      cfg: the configuration.
      task_sets: set name -> task ids (default: ezm_gpu.envs.TASK_SETS).
      known_tasks: every valid task id (default: what ezm_gpu.envs can make).
    """
    if task_sets is None or known_tasks is None:
        from ezm_gpu.envs import TASK_SETS
        from ezm_gpu.envs.scene import valid_task_ids

        task_sets = TASK_SETS if task_sets is None else task_sets
        known_tasks = set(valid_task_ids()) if known_tasks is None else known_tasks
    for key in ("envs", "steps", "batch_size", "start_transitions", "replay_capacity", "episode_length",
                "eval_interval", "eval_steps", "eval_episodes", "checkpoint_interval", "log_interval"):
        _positive_int(cfg, key)
    _positive_int(cfg, "seed", minimum=0)
    if cfg.device not in DEVICES and not re.fullmatch(r"cuda:\d+", str(cfg.device)):
        _fail("device", cfg.device, "one of " + ", ".join(DEVICES) + ", or cuda:N (a GPU index)")
    if cfg.precision not in PRECISIONS:
        _fail("precision", cfg.precision, "one of " + ", ".join(PRECISIONS))
    if cfg.capture not in CAPTURES:
        _fail("capture", cfg.capture, "one of " + ", ".join(CAPTURES) + " (ezm_gpu.graphs)")
    _model_config(cfg)
    for key in ("updates_per_step", "lr", "lr_decay_at"):
        _finite_number(cfg, key, zero_allowed=False)
    _finite_number(cfg, "final_updates", zero_allowed=True)
    if isinstance(cfg.ema_tau, bool) or not isinstance(cfg.ema_tau, (int, float)) or not 0 < cfg.ema_tau <= 1:
        _fail("ema_tau", cfg.ema_tau, "a number in (0, 1]")
    _positive_int(cfg, "ema_interval")
    _positive_int(cfg, "td_steps")
    _positive_int(cfg, "action_repeat")
    _positive_int(cfg, "world_size")
    if isinstance(cfg.tasks, str):
        if cfg.tasks not in task_sets:
            _fail("tasks", cfg.tasks, "a task-set name (" + ", ".join(task_sets) + ") or a list of task ids")
        tasks = list(task_sets[cfg.tasks])
    elif isinstance(cfg.tasks, (list, tuple)) and cfg.tasks and all(isinstance(t, str) for t in cfg.tasks):
        tasks = [_canonical_task(t) for t in cfg.tasks]
        unknown = [t for t, canonical in zip(cfg.tasks, tasks) if canonical not in known_tasks]
        if unknown:
            _fail("tasks", list(cfg.tasks), f"unknown task ids {unknown}; valid: " + ", ".join(sorted(known_tasks)))
        if len(set(tasks)) != len(tasks):
            _fail("tasks", list(cfg.tasks), "each task at most once")
    else:
        _fail("tasks", cfg.tasks, "a task-set name or a non-empty list of task ids")
    if cfg.envs < len(tasks):
        _fail("envs", cfg.envs, f"at least one world per task ({len(tasks)} tasks)")
    if cfg.batch_size < len(tasks):  # each task gets batch_size // num_tasks samples (the release's rule)
        _fail("batch_size", cfg.batch_size, f"at least the number of tasks ({len(tasks)})")
    s = cfg.search
    for key in ("num_simulations", "num_top_actions", "num_root_actions", "num_child_actions"):
        _positive_int(s, f"search.{key}")
    if not 0 <= s.root_wide <= s.num_root_actions:
        _fail("search.root_wide", s.root_wide, f"between 0 and search.num_root_actions ({s.num_root_actions})")
    if not 0 <= s.child_wide <= s.num_child_actions:
        _fail("search.child_wide", s.child_wide, f"between 0 and search.num_child_actions ({s.num_child_actions})")
    if not 0.0 <= s.discount <= 1.0:
        _fail("search.discount", s.discount, "a number in [0, 1]")
    return tasks


def config_to_yaml(cfg: TrainConfig) -> str:
    """A run's config.yaml text."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from plain values (composed or read back); unknown keys are a ConfigError."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; known: {', '.join(sorted(known))}")
    values = dict(values)
    if isinstance(values.get("search"), dict):
        search_known = {f.name for f in dataclasses.fields(SearchSettings)}
        bad = sorted(set(values["search"]) - search_known)
        if bad:
            raise ConfigError(f"unknown keys {['search.' + b for b in bad]}; known: {sorted(search_known)}")
        values["search"] = SearchSettings(**values["search"])
    return TrainConfig(**values)


def load_run_config(run_dir: pathlib.Path) -> TrainConfig:
    """The TrainConfig a run was started with (run_dir/config.yaml).

    A config written before ``updates_per_step`` replaced ``replay_ratio`` (sampled transitions per env
    step, i.e. ``envs * replay_ratio / batch_size`` updates per decision after the warm-up) is read with the
    ``updates_per_step`` that makes the same number of collection updates and ``final_updates: 0``, so such
    a run evaluates and resumes with the updates it was making (on resume, the learning-rate decay moves to
    90% of that count: the former planned count also counted the warm-up's decisions).
    """
    from omegaconf import OmegaConf

    path = pathlib.Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass a run directory written by ezm_gpu.train")
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if "replay_ratio" in values:
        values = _from_replay_ratio(values)
    return config_from_dict(values)


def _from_replay_ratio(values: dict) -> dict:
    """A legacy run config's ``replay_ratio`` as the equivalent ``updates_per_step`` (and no final updates)."""
    from .plan import plan_updates

    values = dict(values)
    ratio = values.pop("replay_ratio")
    cfg = config_from_dict({**values, "updates_per_step": 1.0, "final_updates": 0.0})
    tasks = validate(cfg)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < float("inf"):
        raise ConfigError(f"invalid replay_ratio={ratio!r} (a legacy run config): a finite number > 0")
    plan = plan_updates(cfg, cfg.envs // len(tasks))
    learning = plan.decisions - plan.random_decisions
    collection = math.floor(learning * cfg.envs * ratio / cfg.batch_size + 1e-6)  # what the old loop made
    return {**values, "updates_per_step": max(collection, 1) / cfg.steps, "final_updates": 0.0}
