"""``python -m ezm_gpu.selfcheck``: does every path of the package work on this device, and how fast is it?

Runs a registry of named checks (``CHECKS``; ``--list``) on one device and writes a JSON report plus one line
per check; exits 1 if any check failed (each failure names its check and the failing assertion), 0
otherwise, 2 on a bad argument (before any work). On a GPU it takes a few minutes once MuJoCo-Warp's and
Triton's kernels are in their caches (the first run compiles them):

  kernels          the Triton search kernels against the torch reference (``kernels.agreement``'s rule: integers
                   identical except after a float32 near-tie, floats of identically searched trees within the
                   spec's rtol 1e-5 + atol 1e-6), on EZ-M's shapes and a seeded random sweep of configurations
  env_step         one step of every medium and hard task on the device against the same step on the CPU, within
                   the physics gap of the env tests (``envs.parity``); physics launched directly
  env_step_graph   the same with the physics replayed from a CUDA graph, as training runs it (CUDA only)
  search           the EZ-M search over 4096 trees with the release's settings and model (ms per search)
  learner_update   ``Learner.update`` with the hard preset's model on random replay data (updates/s, memory)
  training         the trainer's own units driven for 60 s on ``task_set=medium envs=4096`` (env steps/s, updates/s)

On a CPU the same checks run at sizes that fit (``CPU_SIZES``: the Triton kernels in the interpreter, in a
subprocess started with TRITON_INTERPRET=1; the env step against MuJoCo's C library instead of the CPU), the
CUDA-only ones are skipped with the reason, and the report says so. Add a check with ``register``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Optional

import torch

from . import envs
from .planning import SearchSettings

__all__ = ["Check", "CHECKS", "register", "Context", "Sizes", "CUDA_SIZES", "CPU_SIZES", "CheckSkipped", "CheckFailed",
           "ENV_TASKS", "run_check", "run_checks", "main"]

ENV_TASKS = envs.TASK_SETS["medium"] + envs.TASK_SETS["hard"]  # the env checks' tasks: 9 h1 + 14 h1hand
PROG = "python -m ezm_gpu.selfcheck"


class CheckSkipped(Exception):
    """A check that cannot run here (the message says why); not a failure."""


class CheckFailed(AssertionError):
    """A failure whose message is complete as it stands (no exception type is prefixed in the report), with the
    measurements taken before it (``metrics``: the report keeps them, e.g. every task's figures)."""

    def __init__(self, message: str, metrics: Optional[dict] = None):
        super().__init__(message)
        self.metrics = metrics or {}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How large each check runs: the release's sizes on CUDA, reduced ones that finish in minutes on a CPU."""

    kernel_trees: int  # B of the kernel comparisons on EZ-M's shapes
    kernel_searches: int  # timed searches per backend on those shapes
    sweep_cases: int  # random search configurations compared
    sweep_max_trees: int  # their B is drawn in 1..this
    sweep_max_simulations: int  # their N is drawn in 1..this
    env_worlds: int  # worlds of the env checks on the device, split over ENV_TASKS (CUDA)
    env_episodes: int  # E: CPU reference worlds per task
    env_steps: int  # T: recorded steps of each reference world (E x T reference states per task)
    env_timed_steps: int  # env steps timed per task
    search_trees: int  # trees of the search check
    search_preset: str  # its model preset (ezm_gpu.model.PRESETS)
    searches: int  # timed searches
    learner_batch: int  # samples per update (a multiple of the hard set's 14 tasks)
    learner_search: SearchSettings  # the reanalysis search of the update
    learner_updates: int  # timed updates after an untimed one
    training_seconds: float  # wall clock of the training loop
    training_overrides: tuple  # python -m ezm_gpu.train's overrides of the training check


CUDA_SIZES = Sizes(kernel_trees=4096, kernel_searches=5, sweep_cases=16, sweep_max_trees=4096, sweep_max_simulations=64,
                   env_worlds=4096, env_episodes=8, env_steps=4, env_timed_steps=10, search_trees=4096,
                   search_preset="medium", searches=5, learner_batch=1022, learner_search=SearchSettings(),
                   learner_updates=10, training_seconds=60.0,
                   training_overrides=("task_set=medium", "envs=4096", "capture=cuda"))
# The hard preset's update at batch 1022 would take minutes on a CPU: 28 samples instead. Training: 2 tasks x 4
# worlds, 12 random decisions first (48 transitions per task), so each world holds a whole sample window (K + n
# + 1 = 11 observations) when the updates start.
CPU_SIZES = Sizes(kernel_trees=128, kernel_searches=1, sweep_cases=8, sweep_max_trees=48, sweep_max_simulations=16,
                  env_worlds=0, env_episodes=8, env_steps=3, env_timed_steps=2, search_trees=256, search_preset="cpu",
                  searches=2, learner_batch=28,
                  learner_search=SearchSettings(num_simulations=8, num_root_actions=8, root_wide=6),
                  learner_updates=2, training_seconds=30.0,
                  training_overrides=("task_set=medium", "tasks=[h1-walk,h1-stand]", "envs=8", "preset=cpu",
                                      "search=small", "batch_size=32", "start_transitions=48", "log_interval=20"))


@dataclasses.dataclass
class Context:
    """What every check is handed: the device, the sizes for it, a scratch directory (removed at the end) and a
    cache shared between checks (the env checks' CPU references)."""

    device: torch.device
    sizes: Sizes
    workdir: pathlib.Path
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Waits for the device's queued work (timings end here); nothing on CPU."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def memory(self) -> dict:
        """Memory figures for a check's metrics (bytes): on CUDA torch's peak since the check started and the
        device's memory in use now (Warp's arrays included); on CPU the process's peak resident set so far."""
        if self.cuda:
            free, total = torch.cuda.mem_get_info(self.device)
            return {"peak_torch_allocated_bytes": torch.cuda.max_memory_allocated(self.device),
                    "device_used_bytes": total - free}
        import resource

        return {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # KiB on Linux


@dataclasses.dataclass(frozen=True)
class Check:
    """A named check: ``fn(ctx)`` returns its measurements ({name: number or text}; an optional "summary" string
    becomes its report line) and raises on failure (CheckSkipped when it cannot run here)."""

    name: str
    fn: Callable[[Context], dict]
    description: str


CHECKS: list[Check] = []


def register(check: Check) -> Check:
    """Adds a check to the registry (run in registration order); names are unique."""
    if any(existing.name == check.name for existing in CHECKS):
        raise ValueError(f"a check named {check.name!r} is registered already")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", check.name):
        raise ValueError(f"check names are lower_snake_case (they are --only arguments), got {check.name!r}")
    CHECKS.append(check)
    return check


def _timed(ctx: Context, fn: Callable[[], object]) -> tuple[object, float]:
    """(fn(), seconds of wall clock from a synchronised device to a synchronised device)."""
    ctx.synchronize()
    start = time.perf_counter()
    result = fn()
    ctx.synchronize()
    return result, time.perf_counter() - start


# --- kernels ----------------------------------------------------------------------------------------------------

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _in_subprocess(ctx: Context, name: str, environment: dict) -> dict:
    """Runs check ``name`` in a child ``python -m ezm_gpu.selfcheck --only name`` with extra environment variables
    (set before anything is imported) and returns its metrics; its failure or skip becomes this one's."""
    report = ctx.workdir / f"{name}-subprocess.json"
    command = [sys.executable, "-m", "ezm_gpu.selfcheck", "--device", str(ctx.device), "--only", name,
               "--out", str(report)]
    result = subprocess.run(command, env={**os.environ, **environment}, capture_output=True, text=True, timeout=1200)
    variables = " ".join(f"{k}={v}" for k, v in environment.items())
    if not report.is_file():
        raise CheckFailed(f"the subprocess '{variables} python {' '.join(command[1:])}' exited {result.returncode} "
                          f"without a report: {result.stderr.strip()[-2000:]}")
    entry = json.loads(report.read_text())["checks"][0]
    if entry["status"] == "skipped":
        raise CheckSkipped(entry["reason"])
    if entry["status"] == "failed":
        raise CheckFailed(entry["error"], entry["metrics"])
    return {**entry["metrics"], "summary": f"{entry['summary']} (subprocess with {variables})"}


def _sweep_cases(sizes: Sizes) -> list[dict]:
    """Seeded random search configurations: B, K, k, N, m0, A, γ, Gumbel noise and prior scale."""
    g = torch.Generator().manual_seed(2024)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=g))

    cases = []
    for _ in range(sizes.sweep_cases):
        num_root = draw(1, 32)
        cases.append(dict(trees=draw(1, sizes.sweep_max_trees), num_root=num_root, num_child=draw(1, 4),
                          simulations=draw(1, sizes.sweep_max_simulations), top=draw(1, num_root + 2),
                          action_dim=draw(1, 61), discount=(0.99, 0.9, 1.0)[draw(0, 2)], gumbel=bool(draw(0, 1)),
                          prior_scale=draw(0, 2) * 0.5))
    return cases


def check_kernels(ctx: Context) -> dict:
    """Triton against the torch reference: EZ-M's shapes (release settings, h1's 19 and h1hand's 61 action dims,
    timed) and a seeded random sweep; every tree held to ``kernels.agreement``'s rule."""
    if not ctx.cuda and not _interpreting():
        # The interpreter must be chosen before triton defines a kernel: a fresh process.
        return _in_subprocess(ctx, "kernels", {"TRITON_INTERPRET": "1"})
    from .kernels import SearchConfig, sampled_gumbel_search, triton_ops
    from .kernels.random_search import RandomModel, check_against_reference, random_inputs, timed_search

    if not triton_ops.available(ctx.device):
        reason = f"the Triton kernels cannot run: {triton_ops.unavailable_reason()}"
        if ctx.cuda:
            raise CheckFailed(reason)
        raise CheckSkipped(reason)
    sizes, latent = ctx.sizes, 64
    settings = SearchSettings()
    metrics = {"backend": "triton (interpreter)" if _interpreting() else "triton (compiled)", "cases": 0, "trees": 0,
               "identical": 0, "near_tie": 0, "worst_float_excess": -math.inf}
    failures = []

    def judge(label, out, inputs, model, config):
        verdict = check_against_reference(out, inputs, model, config)
        agreement = verdict.agreement
        metrics["cases"] += 1
        metrics["trees"] += agreement.identical.numel()
        metrics["identical"] += int(agreement.identical.sum())
        metrics["near_tie"] += int(agreement.near_tie.sum())
        metrics["worst_float_excess"] = max([metrics["worst_float_excess"], *verdict.float_excess.values()])
        if not verdict.agrees:
            failures.append(f"{label}: {verdict.summary()}")

    for label, action_dim in (("ezm_h1", 19), ("ezm_h1hand", 61)):
        config, model = settings.kernel_config, RandomModel(latent, action_dim, settings.num_child_actions, ctx.device)
        inputs = random_inputs(sizes.kernel_trees, settings.num_root_actions, action_dim, latent, ctx.device)
        out, seconds = timed_search(inputs, model, config, "triton", sizes.kernel_searches)
        _, reference_seconds = timed_search(inputs, model, config, "torch", sizes.kernel_searches)
        metrics.update({f"{label}_triton_ms": seconds * 1e3, f"{label}_reference_ms": reference_seconds * 1e3,
                        f"{label}_tree_simulations_per_s": sizes.kernel_trees * config.num_simulations / seconds})
        judge(f"EZ-M shape B={sizes.kernel_trees} A={action_dim}", out, inputs, model, config)
    for seed, case in enumerate(_sweep_cases(sizes)):
        config = SearchConfig(num_simulations=case["simulations"], num_top_actions=case["top"],
                              num_child_actions=case["num_child"], discount=case["discount"])
        model = RandomModel(16, case["action_dim"], case["num_child"], ctx.device, seed=seed)
        inputs = random_inputs(case["trees"], case["num_root"], case["action_dim"], 16, ctx.device, seed=seed + 1)
        g = torch.Generator().manual_seed(seed)
        inputs["root_prior_logits"] = (torch.randn(inputs["root_prior_logits"].shape, generator=g)
                                       * case["prior_scale"]).to(ctx.device)
        uniform = torch.rand(case["trees"], case["num_root"], generator=g).clamp(1e-9, 1 - 1e-9)
        inputs["gumbel"] = -torch.log(-torch.log(uniform)).to(ctx.device) if case["gumbel"] else None
        out = sampled_gumbel_search(**inputs, recurrent_fn=model, config=config, backend="triton")
        judge(", ".join(f"{k}={v}" for k, v in case.items()), out, inputs, model, config)
    if failures:
        raise CheckFailed("Triton differs from the torch reference beyond the agreement rule: " + " | ".join(failures),
                          metrics)
    metrics["summary"] = (f"{metrics['cases']} searches, {metrics['trees']:,} trees agree ({metrics['identical']:,} "
                          f"identical, {metrics['near_tie']} after a near-tie); EZ-M B={sizes.kernel_trees}: triton "
                          f"{metrics['ezm_h1_triton_ms']:.1f} ms/search vs reference "
                          f"{metrics['ezm_h1_reference_ms']:.1f}"
                          f" [{metrics['backend']}]")
    return metrics


# --- env steps --------------------------------------------------------------------------------------------------

def _record(ctx: Context, task: str):
    """(the CPU recording of ``task``, the CPU env it was made with): E worlds stepped T times, every pre-step
    state kept (``envs.parity.record``)."""
    from .envs import parity

    env = envs.make(task, ctx.sizes.env_episodes, device="cpu", seed=0)
    return parity.record(env, ctx.sizes.env_steps), env


def _reference(ctx: Context, task: str):
    """The CPU recording of ``task``, made once for both env checks (the CPU env itself is not kept)."""
    key = ("env_reference", task)
    if key not in ctx.cache:
        ctx.cache[key] = _record(ctx, task)[0]
    return ctx.cache[key]


def _env_steps_per_s(ctx: Context, env, steps: int) -> float:
    """Env steps per second (all worlds) over ``steps`` steps with random actions after an untimed one (which
    captures the CUDA graph), without validation reads: the training loop's way."""
    actions = torch.rand(steps + 1, env.num_envs, env.action_dim, device=env.device) * 2 - 1
    env.reset()
    env.step(actions[0], validate=False)

    def run():
        for action in actions[1:]:
            env.step(action, validate=False)

    _, seconds = _timed(ctx, run)
    env.check()
    return env.num_envs * steps / seconds


def _env_task(ctx: Context, task: str, graph: bool) -> dict:
    """One task: the device's step from the reference states against the reference; its measurements and the
    rule's violations."""
    from .envs import parity

    if not ctx.cuda:
        recording, cpu_env = _record(ctx, task)
        # On the CPU the device is the reference itself: check the Warp step against MuJoCo's C library instead.
        # MuJoCo-Warp implements MuJoCo's algorithms in float32 (the spec: on a CPU it agrees with MuJoCo 4.0 C),
        # so the two differ by float32 rounding and the solver's stopping point (measured ~1e-5 of a step's
        # change), far inside the version gap the rule allows (~8e-3 x MARGIN); a wrong model, control mapping or
        # readout would differ by a whole step's change. The rewards are pure functions of the compared state
        # (tested exactly in tests/test_envs_rewards.py), so the state and head height are compared.
        candidate = parity.mujoco_step(cpu_env.mj_model, recording, cpu_env.frame_skip)
        reference, env, against = recording.reference, cpu_env, "MuJoCo C (float64)"
    else:
        recording = _reference(ctx, task)
        worlds = max(ctx.sizes.env_worlds // len(ENV_TASKS), recording.rows)
        rows = torch.arange(worlds) % recording.rows  # the reference states tiled over the device's worlds
        env = envs.make(task, worlds, device=ctx.device, seed=0, cuda_graph=graph)
        candidate = parity.replay(env, recording, rows)
        reference, against = recording.reference.take(rows.numpy()), "MuJoCo-Warp on the CPU"
    violations = parity.parity_violations(reference, **candidate)
    out = {"worlds": env.num_envs, "reference_states": recording.rows, "reference": against,
           "qvel_gap_fraction": parity.qvel_gap_fraction(reference, candidate["qvel"]),
           "env_steps_per_s": _env_steps_per_s(ctx, env, ctx.sizes.env_timed_steps), "violations": violations}
    if ctx.cuda:
        qvel = candidate["qvel"].cpu()
        other = ctx.cache.get(("env_qvel", task, not graph))
        if other is not None:  # both physics paths ran: how far apart (the same kernels: expected ~0)
            out["graph_vs_direct_max_abs_qvel"] = float((qvel - other).abs().max())
        ctx.cache[("env_qvel", task, graph)] = qvel
    return out


def _env_check(ctx: Context, graph: bool) -> dict:
    from .envs.parity import MARGIN, SPEC_FRACTIONS

    tasks, failures = {}, []
    for task in ENV_TASKS:
        try:
            tasks[task] = result = _env_task(ctx, task, graph)
        except Exception as error:  # noqa: BLE001 - one task's failure must not hide the others'
            failures.append(f"{task}: {type(error).__name__}: {error}")
            continue
        if result["violations"]:
            failures.append(f"{task}: " + "; ".join(result["violations"]))
    metrics = {"physics": "CUDA-graph replay" if graph else "direct launches", "tasks": tasks,
               "qvel_gap_bound": MARGIN * SPEC_FRACTIONS.state, **ctx.memory()}
    if failures:
        raise CheckFailed(f"{len(failures)} of {len(ENV_TASKS)} tasks outside the physics gap: " + " | ".join(failures),
                          metrics)
    worst = max(tasks, key=lambda t: tasks[t]["qvel_gap_fraction"])
    steps = sum(t["env_steps_per_s"] for t in tasks.values()) / len(tasks)
    metrics.update(worst_task=worst, worst_qvel_gap_fraction=tasks[worst]["qvel_gap_fraction"],
                   mean_env_steps_per_s=steps)
    where = ("" if ctx.cuda else ", CPU: Warp against MuJoCo C") + (" [graph replay]" if graph else "")
    metrics["summary"] = (f"{len(tasks)} tasks within the physics gap{where}: worst qvel gap "
                          f"{tasks[worst]['qvel_gap_fraction']:.2e} of a step's change ({worst}; bound "
                          f"{metrics['qvel_gap_bound']:.3f}); {steps:,.0f} env steps/s per task "
                          f"({tasks[worst]['worlds']} worlds each)")
    return metrics


def check_env_step(ctx: Context) -> dict:
    """Every medium and hard task: one step on the device (physics launched directly) against the CPU."""
    return _env_check(ctx, graph=False)


def check_env_step_graph(ctx: Context) -> dict:
    """The same with the physics replayed from a captured CUDA graph (how training steps)."""
    if not ctx.cuda:
        raise CheckSkipped(f"CUDA-graph replay needs a CUDA device; ran on {ctx.device} (where the physics always "
                           "runs directly: env_step covers it)")
    return _env_check(ctx, graph=True)


# --- search, learner, training ----------------------------------------------------------------------------------

def check_search(ctx: Context) -> dict:
    """``planning.search_positions`` (the acting search) over many trees with the release's settings."""
    from .kernels.search import resolve_backend
    from .model import PRESETS, EZMModel
    from .planning import search_positions

    sizes, settings = ctx.sizes, SearchSettings()
    config = PRESETS[sizes.search_preset]()
    model = EZMModel(config).to(ctx.device).eval()
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(sizes.search_trees, config.obs_dim, generator=g).to(ctx.device)
    task_ids = torch.arange(sizes.search_trees, device=ctx.device) % config.num_tasks
    generator = torch.Generator(ctx.device).manual_seed(0)
    search_positions(model, obs, task_ids, settings, generator)  # compiles the kernels of the shape

    def run():
        return [search_positions(model, obs, task_ids, settings, generator) for _ in range(sizes.searches)]

    results, seconds = _timed(ctx, run)
    out, root_value = results[-1]
    n = settings.num_simulations
    for name, tensor in (("action", out.action), ("root_value", out.root_value), ("completed_q", out.completed_q),
                         ("initial value", root_value)):
        if not bool(torch.isfinite(tensor).all()):
            raise CheckFailed(f"the search's {name} is not finite")
    if not bool((out.action.abs() <= 1).all()):
        raise CheckFailed(f"actions outside [-1, 1]: max |a| = {float(out.action.abs().max()):.4f}")
    if not bool((out.visit_counts.sum(1) == n).all()):
        raise CheckFailed(f"root visit counts do not add up to N = {n}")
    per_search = seconds / sizes.searches
    backend = resolve_backend(None, ctx.device)
    note = "" if ctx.cuda else " (CPU: reduced from 4096)"
    return {"trees": sizes.search_trees, "simulations": n, "root_actions": settings.num_root_actions,
            "preset": sizes.search_preset, "backend": backend, "ms_per_search": per_search * 1e3,
            "tree_simulations_per_s": sizes.search_trees * n / per_search, **ctx.memory(),
            "summary": f"{sizes.search_trees} trees{note} x N={n}, K={settings.num_root_actions} with the "
                       f"{sizes.search_preset} model [{backend}]: {per_search * 1e3:.1f} ms per search, "
                       f"{sizes.search_trees * n / per_search:,.0f} tree-simulations/s"}


def _random_replay(ctx: Context, config, batch_size: int):
    """A replay of the model's task set filled with random transitions: 2 worlds per task, 3 windows each."""
    from .replay import ReplayBuffer, ReplayConfig

    worlds = 2 * config.num_tasks
    replay_config = ReplayConfig(num_tasks=config.num_tasks, capacity=64, obs_dim=config.obs_dim,
                                 action_dim=config.action_dim, num_worlds=worlds, batch_size=batch_size)
    replay = ReplayBuffer(replay_config, device=ctx.device)
    g = torch.Generator().manual_seed(0)
    tasks = (torch.arange(worlds) % config.num_tasks).to(ctx.device)
    for step in range(3 * (replay_config.window + 1)):
        done = torch.full((worlds,), step % 20 == 19)  # episodes end now and then: final-observation rows too

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(ctx.device)

        replay.add(tasks, rand(worlds, config.obs_dim), rand(worlds, config.action_dim).clamp(-1, 1),
                   rand(worlds).abs(), done.to(ctx.device), rand(worlds, config.obs_dim))
    return replay


def _hard_learner(ctx: Context):
    """(a Learner of the hard preset's model, a random replay): the same ones at every call (seeded)."""
    from .learner import Learner, LearnerConfig
    from .model import PRESETS, EZMModel

    config = PRESETS["hard"]()  # its defaults are the hard task set's dimensions
    torch.manual_seed(0)
    model = EZMModel(config).to(ctx.device)
    replay = _random_replay(ctx, config, ctx.sizes.learner_batch)
    # As the trainer does: bf16 autocast on CUDA (precision=auto); the EMA every update, so one update moves it.
    learner = Learner(model, LearnerConfig(ema_interval=1, autocast_dtype=torch.bfloat16 if ctx.cuda else None),
                      ctx.sizes.learner_search)
    return learner, replay


def check_learner_update(ctx: Context) -> dict:
    """``Learner.update`` with the hard preset's model (the hard set's 177 obs dims, 61 actions, 14 tasks)."""
    from .model import count_parameters

    sizes = ctx.sizes
    learner, replay = _hard_learner(ctx)
    model = learner.model
    generator = torch.Generator(ctx.device).manual_seed(0)

    def weights(module):  # the task embedding renormalises rows in place on lookup: not a sign of an update
        return [p.detach().clone() for name, p in module.named_parameters() if "embed" not in name]

    before, ema_before = weights(learner.model), weights(learner.ema.copy)
    first = learner.update(replay, generator)["loss"]  # untimed: first-call allocations, cuBLAS/cuDNN choices

    def run():
        return [learner.update(replay, generator)["loss"] for _ in range(sizes.learner_updates)]

    losses, seconds = _timed(ctx, run)
    losses = [float(loss) for loss in [first, *losses]]  # host reads after the timed region
    if not all(math.isfinite(loss) for loss in losses):
        raise CheckFailed(f"non-finite loss: {losses}")
    if all(torch.equal(a, b) for a, b in zip(before, weights(learner.model))):
        raise CheckFailed("the update left every parameter unchanged")
    if all(torch.equal(a, b) for a, b in zip(ema_before, weights(learner.ema.copy))):
        raise CheckFailed("the EMA copy did not move")
    rate = sizes.learner_updates / seconds
    note = "" if ctx.cuda else " (CPU: batch reduced from 1022, small reanalysis search)"
    return {"preset": "hard", "parameters": count_parameters(model), "batch": sizes.learner_batch,
            "reanalysis_simulations": sizes.learner_search.num_simulations, "updates_per_s": rate,
            "ms_per_update": 1e3 / rate, "losses": losses, **ctx.memory(),
            "summary": f"hard preset ({count_parameters(model) / 1e6:.1f}M parameters), batch {sizes.learner_batch}"
                       f"{note}: {rate:.2f} updates/s, loss {losses[0]:.3g} -> {losses[-1]:.3g}"}


def check_training(ctx: Context) -> dict:
    """The trainer's units (``Trainer.run``'s loop: the updates due by the plan, one decision of every world) for
    a fixed wall-clock time; fails on a non-finite loss, capacity overflow or no progress."""
    from .cli import compose_config
    from .progress import Progress
    from .trainer import Trainer

    sizes = ctx.sizes
    never = 10 ** 9  # no evaluation or checkpoint inside the timed run: their cost is not training throughput
    cfg = compose_config([*sizes.training_overrides, f"device={ctx.device}", f"out={ctx.workdir / 'training'}",
                          f"eval_interval={never}", f"checkpoint_interval={never}", "checkpoint_replay=false"])
    trainer, build_seconds = _timed(ctx, lambda: Trainer(cfg))
    plan, collector = trainer.plan, trainer.collector
    trainer.progress = Progress(plan.decisions + plan.total, 0, disable=True)  # what run() sets up, without a bar
    trainer.progress.rates(0, 0)
    # Seconds, decisions and updates per phase. The random warm-up decisions (no search), the first searching
    # decision and the first updates (kernel compilation, graph capture, allocator growth) are kept out of the rates.
    phases = {name: [0.0, 0, 0] for name in ("random", "first_search", "search", "first_updates", "updates")}

    def collect():
        info = collector.collect(trainer.learner.ema.copy)
        trainer.curriculum.record(info["finished"], info["episode_return"], collector.decisions)

    def update():  # in chunks, so the clock is looked at between them
        trainer.update_until(min(plan.due(collector.decisions), trainer.updates + 8))

    def phase_of(unit) -> str:
        if unit is update:
            return "updates" if phases["first_updates"][0] else "first_updates"
        if collector.decisions < plan.random_decisions:
            return "random"
        return "search" if phases["first_search"][0] else "first_search"

    try:
        deadline = time.perf_counter() + sizes.training_seconds
        while time.perf_counter() < deadline and collector.decisions < plan.decisions:
            unit = update if trainer.updates < plan.due(collector.decisions) else collect
            phase, counts = phases[phase_of(unit)], (collector.decisions, trainer.updates)
            _, seconds = _timed(ctx, unit)
            phase[0] += seconds
            phase[1] += collector.decisions - counts[0]
            phase[2] += trainer.updates - counts[1]
        trainer.world.check()
        trainer.divergence.raise_if_diverged(trainer.run_dir)
    finally:
        trainer.metrics.close()
        trainer.progress.close()
    if collector.decisions <= plan.random_decisions or trainer.updates == 0:
        raise CheckFailed(f"no progress in {sizes.training_seconds:.0f} s: {collector.decisions} decisions "
                          f"({plan.random_decisions} of them random warm-up), {trainer.updates} updates")

    def rate(name, index):
        seconds, *counts = phases[name]
        return counts[index - 1] / seconds if seconds else math.nan

    steps_per_decision = cfg.envs * cfg.action_repeat
    env_rate, update_rate = rate("search", 1) * steps_per_decision, rate("updates", 2)
    total = sum(phase[0] for phase in phases.values())
    note = "" if ctx.cuda else " (CPU: reduced from task_set=medium envs=4096, 60 s)"
    return {"tasks": len(trainer.tasks), "envs": cfg.envs, "preset": cfg.preset,
            "simulations": cfg.search.num_simulations, "batch_size": cfg.batch_size, "build_seconds": build_seconds,
            "seconds": total, "decisions": collector.decisions, "updates": trainer.updates,
            "env_steps_per_task": collector.env_steps_per_task, "env_steps_per_s": env_rate,
            "updates_per_s": update_rate, "overall_env_steps_per_s": collector.decisions * steps_per_decision / total,
            "phases": {name: {"seconds": p[0], "decisions": p[1], "updates": p[2]} for name, p in phases.items()},
            **ctx.memory(),
            "summary": f"{len(trainer.tasks)} tasks x {cfg.envs // len(trainer.tasks)} worlds, preset {cfg.preset}"
                       f"{note}, {total:.0f} s: {collector.decisions} decisions, {trainer.updates} updates; acting "
                       f"{env_rate:,.0f} env steps/s, updating {update_rate:.2f} updates/s (the first search decision "
                       f"and first updates, which compile, apart)"}


def check_capture(ctx: Context) -> dict:
    """The hot loop's two captured steps (``ezm_gpu.graphs``), each against the same step run eagerly from the same
    state: the learner update (hard preset, as ``learner_update``) and the acting search (``act``, as ``search``).
    On CUDA they are captured as CUDA graphs and the figures are the speed-up of replaying; on a CPU the "trace"
    stand-in records and replays them (it proves they replay correctly; it is no faster)."""
    from .acting import act
    from .collect import GRAPH_WARMUP
    from .graphs import GraphedStep
    from .model import PRESETS, EZMModel
    from .rng import CounterRNG

    sizes, mode = ctx.sizes, "cuda" if ctx.cuda else "trace"
    # Replays run the recorded kernels on the same data: equal to eager in float32 on the CPU; on CUDA the
    # backward's atomic adds sum in another order at every run, so a few bf16 updates agree to ~1e-2.
    rtol, atol = (2e-2, 1e-3) if ctx.cuda else (0.0, 0.0)
    figures = {}
    runs = {}
    for label in ("eager", mode):
        learner, replay = _hard_learner(ctx)
        generator = CounterRNG(0, ctx.device)
        step = GraphedStep(lambda: learner.update(replay, generator), "off" if label == "eager" else mode,
                           warmup=GRAPH_WARMUP, name="learner update")
        first, seconds_first = _timed(ctx, lambda: [float(step()["loss"]) for _ in range(GRAPH_WARMUP + 1)])
        losses, seconds = _timed(ctx, lambda: [step()["loss"].clone() for _ in range(sizes.learner_updates)])
        runs[label] = first + [float(loss) for loss in losses]
        figures[f"update_ms_{label}"] = seconds / sizes.learner_updates * 1e3
    try:
        torch.testing.assert_close(torch.tensor(runs[mode]), torch.tensor(runs["eager"]), rtol=rtol, atol=atol)
    except AssertionError as error:
        raise CheckFailed(f"the captured update's losses differ from eager ones: {runs[mode]} vs {runs['eager']} "
                          f"({error})", figures) from None

    config = PRESETS[sizes.search_preset]()
    torch.manual_seed(0)
    model = EZMModel(config).to(ctx.device).eval()
    obs = torch.randn(sizes.search_trees, config.obs_dim, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    task_ids = torch.arange(sizes.search_trees, device=ctx.device) % config.num_tasks
    actions = {}
    for label in ("eager", mode):
        generator = CounterRNG(0, ctx.device)
        step = GraphedStep(lambda o: act(model, o, task_ids, SearchSettings(), generator).actions,
                           "off" if label == "eager" else mode, warmup=GRAPH_WARMUP, name="acting search")
        for _ in range(GRAPH_WARMUP + 1):
            step(obs)
        outs, seconds = _timed(ctx, lambda: [step(obs).clone() for _ in range(sizes.searches)])
        actions[label] = outs
        figures[f"act_ms_{label}"] = seconds / sizes.searches * 1e3
    for i, (a, b) in enumerate(zip(actions["eager"], actions[mode])):
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-5):  # float32 (the search is deterministic)
            raise CheckFailed(f"the captured acting search's actions differ from eager ones at call {i + 1}: max "
                              f"|diff| {float((a - b).abs().max()):.3g}", figures)
    update_gain = figures["update_ms_eager"] / figures[f"update_ms_{mode}"]
    act_gain = figures["act_ms_eager"] / figures[f"act_ms_{mode}"]
    note = "" if ctx.cuda else " (CPU: the trace stand-in, which proves the replay, not the speed)"
    return {"mode": mode, **figures, "update_speedup": update_gain, "act_speedup": act_gain, **ctx.memory(),
            "summary": f"{mode}{note}: update {figures['update_ms_eager']:.1f} -> {figures[f'update_ms_{mode}']:.1f} "
                       f"ms (x{update_gain:.2f}), acting search over {sizes.search_trees} trees "
                       f"{figures['act_ms_eager']:.1f} -> {figures[f'act_ms_{mode}']:.1f} ms (x{act_gain:.2f}); "
                       "replays equal to eager"}


for _check in (
        Check("kernels", check_kernels, "Triton search kernels against the torch reference (EZ-M shapes, sweep)"),
        Check("env_step", check_env_step, "one step of each medium and hard task on the device against the CPU"),
        Check("env_step_graph", check_env_step_graph, "the same with CUDA-graph replay of the physics (CUDA only)"),
        Check("search", check_search, "the EZ-M search over 4096 trees, release settings (ms per search)"),
        Check("learner_update", check_learner_update, "Learner.update with the hard preset (updates/s, memory)"),
        Check("capture", check_capture, "the update and the acting search captured (CUDA graphs) against eager"),
        Check("training", check_training, "60 s of training, task_set=medium envs=4096 capture=cuda (env steps/s, updates/s)")):
    register(_check)


# --- the runner and the report ----------------------------------------------------------------------------------

def run_check(check: Check, ctx: Context) -> dict:
    """Runs one check and returns its report entry: name, description, status ("passed", "failed", "skipped"),
    seconds, error (the failing assertion's message) or reason (of a skip), summary, metrics, traceback."""
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    start = time.perf_counter()
    entry = {"name": check.name, "description": check.description, "status": "passed", "error": None}
    metrics = {}
    try:
        metrics = dict(check.fn(ctx) or {})
    except CheckSkipped as skipped:
        entry.update(status="skipped", reason=str(skipped))
    except Exception as error:  # noqa: BLE001 - any failure is reported, and the next check runs
        message = str(error) if isinstance(error, CheckFailed) else f"{type(error).__name__}: {error}"
        entry.update(status="failed", error=message, traceback=traceback.format_exc())
        metrics = dict(getattr(error, "metrics", None) or {})
    finally:
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    entry.update(seconds=time.perf_counter() - start, summary=metrics.pop("summary", ""), metrics=metrics)
    return entry


def _line(entry: dict) -> str:
    """The check's report line: status, name, seconds, then its summary, error or skip reason."""
    status = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[entry["status"]]
    text = entry["error"] if entry["status"] == "failed" else entry.get("reason") or entry["summary"]
    return f"{status}  {entry['name']:<16} {entry['seconds']:7.1f} s  {text}"


def _jsonable(value):
    """Metrics as strict JSON: numpy/torch scalars as numbers, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_report(path: pathlib.Path, report: dict) -> None:
    """Writes the report atomically: a temporary file beside it, then renamed over it."""
    text = json.dumps(_jsonable(report), indent=2)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text + "\n")
    os.replace(temporary, path)


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "index": device.index, "name": props.name,
                "capability": f"{props.major}.{props.minor}", "memory_bytes": props.total_memory,
                "multiprocessors": props.multi_processor_count}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def versions(device: torch.device) -> dict:
    """Python's and the stack's versions; the CUDA driver's (Warp's reading, and nvidia-smi's) on CUDA."""
    import importlib.metadata

    out = {"python": platform.python_version()}
    for dist in ("ezm-gpu", "torch", "triton", "warp-lang", "mujoco", "mujoco-warp", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["torch_cuda"] = torch.version.cuda
    if device.type == "cuda":
        import warp as wp

        driver = wp.get_cuda_driver_version()
        out["cuda_driver"] = None if driver is None else ".".join(map(str, driver))
        out["nvidia_driver"] = _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out


def _command(command: list) -> Optional[str]:
    """A short command's first output line, or None when it is missing or fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def _git_commit() -> Optional[str]:
    source = pathlib.Path(__file__).resolve().parent
    commit = _command(["git", "-C", str(source), "rev-parse", "HEAD"])
    dirty = _command(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"])
    return None if commit is None else commit + ("+changes" if dirty else "")


def _header(report: dict) -> str:
    d, v = report["device"], report["versions"]
    where = (f"{report['device_name']} ({d['name']}, capability {d['capability']}, "
             f"{d['memory_bytes'] / 2 ** 30:.1f} GiB; CUDA driver {v.get('cuda_driver')}, nvidia "
             f"{v.get('nvidia_driver')})" if d["type"] == "cuda" else f"cpu ({d['name']}, {d['cores']} cores)")
    return (f"ezm-gpu selfcheck on {where}\n  python {v['python']}, torch {v['torch']} (CUDA {v['torch_cuda']}), "
            f"triton {v['triton']}, warp {v['warp-lang']}, mujoco {v['mujoco']}, mujoco-warp {v['mujoco-warp']}")


def run_checks(checks: list[Check], ctx: Context, out: pathlib.Path, command: list) -> dict:
    """Runs ``checks`` in order, printing a line per check and rewriting the report after each (a killed run
    leaves the checks done so far); returns the report."""
    started = time.perf_counter()
    report = {"command": command, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "device_name": str(ctx.device), "device": device_info(ctx.device), "ran_on_cpu": not ctx.cuda,
              "sizes": dataclasses.asdict(ctx.sizes), "torch_threads": torch.get_num_threads(),
              "versions": versions(ctx.device), "git_commit": _git_commit(),
              "checks": [], "passed": None}
    print(_header(report), flush=True)
    if not ctx.cuda:
        print("  ran on CPU: sizes reduced, CUDA-only checks skipped", flush=True)
    for check in checks:
        print(f"  ... {check.name}: {check.description}", file=sys.stderr, flush=True)
        entry = run_check(check, ctx)
        report["checks"].append(entry)
        print(_line(entry), flush=True)
        write_report(out, report)
    counts = {status: sum(entry["status"] == status for entry in report["checks"])
              for status in ("passed", "failed", "skipped")}
    failed = [e["name"] for e in report["checks"] if e["status"] == "failed"]
    report.update(passed=not failed, counts=counts, seconds=time.perf_counter() - started)
    write_report(out, report)
    verdict = f"FAILED ({', '.join(failed)})" if failed else "passed"
    print(f"selfcheck {verdict}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped in "
          f"{report['seconds']:.0f} s on {ctx.device}" + (" (ran on CPU: sizes reduced, CUDA-only checks skipped)"
                                                        if not ctx.cuda else "") + f"; report: {out}", flush=True)
    return report


def _device(text: str) -> torch.device:
    if text != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    try:
        return envs.canonical_device(None if text == "auto" else text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (use --device cpu or auto)") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="checks:\n" + "\n".join(f"  {c.name:<16} {c.description}" for c in CHECKS))
    parser.add_argument("--device", type=_device, default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="where to run (default auto: CUDA when available)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON report path (default: selfcheck-<timestamp>.json in the current directory)")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]", help="run only these checks (see --list)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    return parser


def main(argv: Optional[list] = None) -> int:
    """The command line; returns the exit status (0 every check passed or was skipped, 1 a check failed; bad
    arguments exit 2 through argparse before any work)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for check in CHECKS:
            print(f"{check.name:<16} {check.description}")
        return 0
    names = [c.name for c in CHECKS]
    selected = CHECKS
    if args.only is not None:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in names]
        if unknown or not wanted:
            parser.error(f"--only: unknown check(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(names)}")
        selected = [c for c in CHECKS if c.name in wanted]
    out = args.out or pathlib.Path.cwd() / f"selfcheck-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    if not out.parent.is_dir():
        parser.error(f"--out {out}: the directory {out.parent} does not exist")
    envs.silence_warp()
    sizes = CUDA_SIZES if args.device.type == "cuda" else CPU_SIZES
    if args.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # The CPU checks are small, operator-bound work: a second thread gains little on an idle machine, and on a
        # busy one oversubscribes the cores (measured on 2 cores beside another job: a hard-preset update 12 s with
        # two threads, 0.9 s with one). OMP_NUM_THREADS, when set, decides instead.
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ezm-selfcheck-") as workdir:
        ctx = Context(device=args.device, sizes=sizes, workdir=pathlib.Path(workdir))
        report = run_checks(selected, ctx, out.resolve(), [PROG, *(sys.argv[1:] if argv is None else argv)])
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
