"""Collection: one agent decision of every world (act → env step(s) → replay insert) and the training returns.

Everything stays on the device; the per-task returns are read only where a log row is written.
"""
from __future__ import annotations

import torch

from .acting import act
from .graphs import GraphedStep
from .planning import SearchSettings
from .replay import ReplayBuffer

__all__ = ["step_repeated", "EpisodeReturns", "Collector", "GRAPH_WARMUP"]

GRAPH_WARMUP = 3  # eager calls before a hot-loop step is captured (torch's CUDA-graph examples warm up 3)


def step_repeated(world, actions: torch.Tensor, repeat: int) -> tuple:
    """``repeat`` env steps with the same actions [W, A]: one agent decision (action repeat).

    Returns (next_obs [W, obs], reward [W] summed over the steps until the world's episode ended,
    terminated [W], info) with info["done"] [W] (the episode ended during the decision),
    info["final_observation"] [W, obs] (of the first ended episode) and info["episode_return"] [W] (its
    return). A world whose episode ends before the last repeat is auto-reset by the env and takes the
    remaining repeats in its new episode (fixed shapes, no host read); with time limits that are multiples
    of ``repeat`` and no terminations, episodes end exactly on decision boundaries. ``repeat=1`` is a plain
    ``world.step``.
    """
    next_obs, reward, terminated, _, info = world.step(actions, validate=False)
    if repeat == 1:
        return next_obs, reward, terminated, info
    total, done = reward.clone(), info["done"].clone()
    final, episode_return = info["final_observation"].clone(), info["episode_return"].clone()
    for _ in range(repeat - 1):
        next_obs, reward, step_terminated, _, info = world.step(actions, validate=False)
        first = info["done"] & ~done  # this step ended an episode that had not ended yet in this decision
        total += reward * ~done
        terminated = terminated | (step_terminated & ~done)
        final = torch.where(first[:, None], info["final_observation"], final)
        episode_return = torch.where(first, info["episode_return"], episode_return)
        done |= info["done"]
    return next_obs, total, terminated, {"done": done, "final_observation": final, "episode_return": episode_return}


class EpisodeReturns:
    """Per-task sums and counts of the training episodes finished since the last log row (on the device).

    A world's first episode, shortened by a staggered start, is no score (``partial`` [W] marks it).
    """

    def __init__(self, task_ids: torch.Tensor, num_tasks: int, staggered: bool):
        device = task_ids.device
        self.task_mask = torch.nn.functional.one_hot(task_ids, num_tasks).float()  # [W, T]
        self.sum = torch.zeros(num_tasks, device=device)  # [T]
        self.count = torch.zeros(num_tasks, device=device)  # [T]
        self.partial = torch.full(task_ids.shape, staggered, dtype=torch.bool, device=device)  # [W]

    def record(self, done: torch.Tensor, episode_return: torch.Tensor) -> torch.Tensor:
        """done [W] bool, episode_return [W] -> [W] bool: the episodes that count (full ones)."""
        finished = done & ~self.partial
        self.partial &= ~done
        # Per-task sums as reductions over a [W, T] mask: a fixed order on every device (index_add_ on
        # CUDA adds with atomics, in an order that changes from run to run).
        self.sum += (self.task_mask * (episode_return * finished)[:, None]).sum(0)
        self.count += (self.task_mask * finished[:, None]).sum(0)
        return finished

    def take_means(self, tasks: list) -> dict:
        """{task: mean return} of the tasks that finished episodes since the last call (host read), then zeroes."""
        means = (self.sum / self.count.clamp(min=1)).tolist()
        out = {task: mean for task, mean, count in zip(tasks, means, self.count.tolist()) if count}
        self.sum.zero_()
        self.count.zero_()
        return out

    def state_dict(self) -> dict:
        return {"sum": self.sum.clone(), "count": self.count.clone(), "partial": self.partial.clone()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("sum", "count", "partial"):
            if key in state:  # (runs checkpointed before staggered starts have no "partial")
                getattr(self, key).copy_(state[key])


class Collector:
    """One decision of every world: act with the search (uniformly at random during the warm-up), step the
    worlds ``action_repeat`` times, store the transitions, count the finished episodes' returns.

    ``capture`` ("off" | "cuda" | "trace", ``ezm_gpu.graphs``): the searched decisions' acting search, and the
    replay insert with the returns' count, are each captured once and replayed (the env step replays its
    physics from its own CUDA graph: MuJoCo-Warp's solver loops are conditional graph nodes, which CUDA does
    not nest inside another capture). The generator must then be a ``rng.CounterRNG``. ``shards``: the
    data-parallel ranks that each collect with as many worlds (the counts of env steps are the run's).
    """

    def __init__(self, world, replay: ReplayBuffer, search: SearchSettings, action_repeat: int,
                 start_transitions: int, returns: EpisodeReturns, generator, capture: str = "off", shards: int = 1):
        self.world, self.replay, self.search, self.returns, self.generator = world, replay, search, returns, generator
        self.action_repeat, self.start_transitions, self.capture = action_repeat, start_transitions, capture
        self._search_model, self._search_step = None, None  # the acting search, of the model last passed
        self._record = GraphedStep(self._record_step, capture, warmup=GRAPH_WARMUP, name="replay insert")
        # The smallest task's worlds in the whole run (``shards`` data-parallel ranks step as many as this one).
        self.worlds_per_task = min(s.stop - s.start for s in world.slices) * shards
        self.decisions = 0  # decisions taken
        self.obs = None  # [W, obs] the worlds' current observations (``reset`` or a checkpoint sets them)

    def reset(self, stagger: bool) -> None:
        """Starts every world's first episode (staggered: time limits fall uniformly over the first one)."""
        self.obs = self.world.reset(stagger=stagger, stagger_multiple=self.action_repeat)

    @property
    def env_steps_per_task(self) -> int:
        """Env steps each task has taken: decisions x its worlds (the smallest task's share) x action repeat."""
        return self.decisions * self.worlds_per_task * self.action_repeat

    def collect(self, model) -> dict:
        """One decision with ``model`` (the acting copy); returns the step's info plus ``finished`` [W] bool
        (full episodes that ended: their ``episode_return`` [W] counts)."""
        warm_up = self.decisions * self.worlds_per_task < self.start_transitions  # the same count for every task
        if warm_up:
            actions = act(model, self.obs, self.world.task_ids, self.search, self.generator, random=True).actions
        else:
            actions = self._search(model)(self.obs)
        next_obs, reward, terminated, info = step_repeated(self.world, actions, self.action_repeat)
        finished = self._record(self.obs, actions, reward, info["done"], info["final_observation"], terminated,
                                info["episode_return"])
        info = dict(info, finished=finished)
        self.obs = next_obs
        self.decisions += 1
        return info

    def _search(self, model) -> GraphedStep:
        """The acting search of ``model``: obs [W, obs] -> actions [W, A] (captured per model)."""
        if model is not self._search_model:  # (a run passes one model, its EMA copy, updated in place)
            self._search_model, self._search_step = model, GraphedStep(
                lambda obs: act(model, obs, self.world.task_ids, self.search, self.generator).actions,
                self.capture, warmup=GRAPH_WARMUP, name="acting search")
        return self._search_step

    def _record_step(self, obs, actions, reward, done, final_observation, terminated, episode_return):
        """Stores the decision's transitions and counts its finished episodes -> finished [W] bool."""
        self.replay.add(self.world.task_ids, obs, actions, reward, done, final_observation, terminated,
                        validate=False)
        return self.returns.record(done, episode_return)
