"""The hot loop, capturable: a captured step replays exactly as eager calls would run (``ezm_gpu.graphs``).

CUDA graphs cannot run here; the "trace" mode records a step the way a CUDA graph does (the dispatched
operators, every Python value frozen at capture, the same memory at every replay) and replays the recording.
Bitwise equality with eager calls is the claim: a replay runs the same operators on the same values.
"""
import dataclasses

import pytest
import torch

from ezm_gpu import envs, graphs, train
from ezm_gpu.checkpoint import latest_checkpoint, load_checkpoint
from ezm_gpu.collect import GRAPH_WARMUP, Collector, EpisodeReturns
from ezm_gpu.config import ConfigError, TrainConfig
from ezm_gpu.graphs import GraphedStep
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.planning import SearchSettings
from ezm_gpu.replay import ReplayBuffer, ReplayConfig
from ezm_gpu.rng import CounterRNG
from test_learner import _filled_replay, _learner
from test_train import SMALL, _interrupt_at, _run_until_interrupted, _train_rows

SEARCH = SearchSettings(num_simulations=4, num_root_actions=4, root_wide=3, num_top_actions=4)


def test_a_replay_freezes_host_values_and_reuses_its_memory():
    """What the stand-in must catch: a step steered by a Python value repeats the captured value, and the
    outputs are the same tensors every call (a caller keeping one sees it overwritten)."""
    state = {"python": 0}
    total = torch.zeros(())
    device_count = torch.zeros((), dtype=torch.int64)

    def step(x):
        state["python"] += 1  # host state: frozen at capture
        device_count.add_(1)  # device state: advances at every replay
        total.add_(x * state["python"])
        return total * 1, device_count * 1

    graphed = GraphedStep(step, "trace", warmup=1)
    outs = [tuple(float(t) for t in graphed(torch.tensor(1.0))) for _ in range(4)]
    # eager (x1), captured (x2), replays still x2 where eager would add 3 and 4
    assert outs == [(1.0, 1.0), (3.0, 2.0), (5.0, 3.0), (7.0, 4.0)]
    assert graphed.captured and state["python"] == 2  # the replays ran no Python
    first, again = graphed(torch.tensor(0.0)), graphed(torch.tensor(0.0))
    assert first[0] is again[0]
    with pytest.raises(ValueError, match="replays with the inputs it was captured with"):
        graphed(torch.zeros(2))


def test_graphed_step_rejects_bad_modes_and_cuda_without_a_gpu():
    with pytest.raises(ValueError, match="mode must be one of off, cuda, trace"):
        GraphedStep(lambda: None, "graph")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            GraphedStep(lambda: None, "cuda")


def _updates(mode: str, count: int):
    replay, learner = _filled_replay(), _learner()  # EMA every 2nd update, rate x0.1 after update 3
    generator = CounterRNG(1)
    step = GraphedStep(lambda: learner.update(replay, generator), mode, warmup=1)
    losses = [{k: v.clone() for k, v in step().items()} for _ in range(count)]
    return learner, replay, losses, step


def test_a_captured_update_replays_as_eager_updates():
    """Captured at update 2, replayed 4 times across the EMA's interval and the learning-rate step: every term,
    weight, EMA weight, Adam moment and priority equal to six eager updates, bit for bit."""
    eager, captured = _updates("off", 6), _updates("trace", 6)
    assert captured[3].captured and not eager[3].captured
    for a, b in zip(eager[2], captured[2]):
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    (la, ra), (lb, rb) = eager[:2], captured[:2]
    for name in ("model", "ema"):
        sa = la.model.state_dict() if name == "model" else la.ema.copy.state_dict()
        sb = lb.model.state_dict() if name == "model" else lb.ema.copy.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert torch.equal(ra.priorities(), rb.priorities())
    moments = lambda learner: [t for s in learner.optimizer.state.values() for t in s.values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(moments(la), moments(lb)))
    assert float(lb.optimizer.param_groups[0]["lr"]) == pytest.approx(1e-5) and lb.updates == 6


def test_a_schedule_kept_on_the_host_would_replay_wrongly():
    """The control: the comparison above catches a schedule kept on the host. The EMA told its step by a Python
    counter (as the learner did before its step count moved to the device) averages, replayed, at the captured
    call's decision rather than every second step; told by the device count it replays as eager; a host read
    of the device count is refused at capture (as a CUDA graph capture refuses it)."""
    from ezm_gpu.ema import EMA

    def run(mode, steer):
        torch.manual_seed(0)
        model = EZMModel(ModelConfig.cpu(obs_dim=6, action_dim=3, num_tasks=2))
        ema, step = EMA(model, tau=0.5, interval=2), torch.zeros((), dtype=torch.int64)
        host = [0]

        def call():
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
            step.add_(1)
            host[0] += 1
            told = step if steer == "device" else host[0] if steer == "host" else int(step)
            return ema.update(model, told)

        graphed = GraphedStep(call, mode, warmup=1)
        return [bool(graphed()) for _ in range(6)], next(iter(ema.copy.parameters())).clone()

    eager = run("off", "device")
    assert eager[0] == [False, True] * 3
    assert run("trace", "device")[0] == eager[0] and torch.equal(run("trace", "device")[1], eager[1])
    frozen = run("trace", "host")  # captured at call 2 (due): every replay averages
    assert frozen[0] == [False] + [True] * 5 and not torch.equal(frozen[1], eager[1])
    with pytest.raises(RuntimeError, match="get value out of a tracing tensor"):
        run("trace", "read")  # int(step): a host read
def _decisions(mode: str, count: int):
    world = envs.make_set("cartpole", 4, device="cpu", seed=0, time_limit=6)  # episodes end inside the run
    replay = ReplayBuffer(ReplayConfig(num_tasks=2, capacity=64, obs_dim=world.obs_dim, action_dim=world.action_dim,
                                       num_worlds=4, batch_size=2, unroll_steps=1, td_steps=1))
    returns = EpisodeReturns(world.task_ids, 2, staggered=False)
    collector = Collector(world, replay, SEARCH, action_repeat=2, start_transitions=2, returns=returns,
                          generator=CounterRNG(0), capture=mode)
    torch.manual_seed(0)
    model = EZMModel(ModelConfig.cpu(obs_dim=world.obs_dim, action_dim=world.action_dim, num_tasks=2))
    collector.reset(stagger=False)
    finished = [collector.collect(model)["finished"].clone() for _ in range(count)]
    return collector, replay, returns, finished


def test_captured_decisions_replay_as_eager_decisions():
    """One warm-up decision, then searched ones: the acting search and the replay insert captured after
    GRAPH_WARMUP calls and replayed; the replay's every row, the returns and the worlds' states as eager."""
    count = 1 + GRAPH_WARMUP + 4
    eager, captured = _decisions("off", count), _decisions("trace", count)
    assert captured[0]._search_step.captured and captured[0]._record.captured
    assert all(torch.equal(a, b) for a, b in zip(eager[3], captured[3]))
    assert sum(int(f.sum()) for f in captured[3]) > 0  # episodes ended during the replays
    stored_a, stored_b = eager[1].state_dict()["tensors"], captured[1].state_dict()["tensors"]
    assert all(torch.equal(v, stored_b[k]) for k, v in stored_a.items())
    assert torch.equal(eager[2].sum, captured[2].sum) and torch.equal(eager[0].obs, captured[0].obs)


def test_a_captured_training_run_equals_the_eager_run_and_resumes(tmp_path, monkeypatch):
    """``capture=trace`` through the command line: the same losses and weights as the same run with every step
    eager, and, interrupted and resumed (the steps captured again after the resume), as the whole run."""
    args = [f"{k}={v}" for k, v in SMALL.items() if k != "search"] + [
        "search=small", "search.num_simulations=4", "search.num_root_actions=4", "search.root_wide=2", "capture=trace"]
    train.main(args + [f"out={tmp_path / 'captured'}"])
    with monkeypatch.context() as patch:  # the same run, every step eager
        init = GraphedStep.__init__
        patch.setattr(GraphedStep, "__init__", lambda self, fn, mode="off", **kw: init(self, fn, "off", **kw))
        train.main(args + [f"out={tmp_path / 'eager'}"])
    captured, eager = tmp_path / "captured", tmp_path / "eager"
    assert _train_rows(captured) == _train_rows(eager) and len(_train_rows(eager)) >= 10
    a = load_checkpoint(latest_checkpoint(eager / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(captured / "checkpoints"))
    assert all(torch.equal(a["learner"]["model"][k], b["learner"]["model"][k]) for k in a["learner"]["model"])
    assert b["rng"]["generators"][0][1] > 0  # the counter generator's draws, checkpointed
    periodic = _interrupt_at(monkeypatch, 2)  # before any capture: the resumed process captures its steps
    parted = _run_until_interrupted(TrainConfig(**SMALL, capture="trace", out=str(tmp_path / "parted")))
    monkeypatch.setattr(train.Trainer, "after_update", periodic)
    train.main([f"resume={parted}"])
    assert _train_rows(parted) == _train_rows(captured)
    c = load_checkpoint(latest_checkpoint(parted / "checkpoints"))
    assert all(torch.equal(b["learner"]["model"][k], c["learner"]["model"][k]) for k in b["learner"]["model"])


def test_capture_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = dataclasses.replace(TrainConfig(**SMALL), capture="cuda", out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"invalid capture='cuda': CUDA graphs need a CUDA device"):
        train.Trainer(cfg)
    with pytest.raises(ConfigError, match=r"invalid capture='graphs': one of off, cuda, trace"):
        train.Trainer(dataclasses.replace(cfg, capture="graphs"))
    assert not (tmp_path / "run").exists()
    assert graphs.MODES == ("off", "cuda", "trace")
