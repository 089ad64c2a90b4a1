"""The hot loop as a whole: one decision (act → env steps → replay insert → returns) and one learner update
(sample → reanalysis → unroll → loss → backward → Adam → priorities → obs statistics → EMA) read nothing back
to the host, so each can run inside a CUDA graph. The parts have their own no-sync tests; these run the
whole units a training run calls."""
import torch

from ezm_gpu import envs
from ezm_gpu.collect import Collector, EpisodeReturns
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.planning import SearchSettings
from ezm_gpu.replay import ReplayBuffer, ReplayConfig
from host_sync import forbid_host_sync
from test_learner import _filled_replay, _learner

SEARCH = SearchSettings(num_simulations=4, num_root_actions=4, root_wide=3, num_top_actions=4)


def test_a_whole_update_reads_nothing_back(monkeypatch):
    replay, learner = _filled_replay(), _learner(ema_interval=1)  # EMA every update: it is inside too
    g = torch.Generator().manual_seed(1)
    before = [p.detach().clone() for p in learner.model.parameters()]
    ema_stats = learner.ema.copy.state_dict()["obs_norm.mean"].clone()  # the EMA averages the obs statistics
    priorities = replay.priorities().clone()
    forbid_host_sync(monkeypatch, "Learner.update")
    terms = [learner.update(replay, g) for _ in range(3)]  # crosses the learning-rate step (update 3)
    monkeypatch.undo()
    assert all(torch.isfinite(t["loss"]) for t in terms)
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))
    assert not torch.equal(priorities, replay.priorities())
    assert learner.optimizer.param_groups[0]["lr"] == 1e-5 and learner.updates == 3
    assert not torch.equal(ema_stats, learner.ema.copy.state_dict()["obs_norm.mean"])


def test_a_whole_decision_reads_nothing_back(monkeypatch):
    """Warm-up decisions (uniform actions) and searched ones, with action repeat and auto-resets inside."""
    world = envs.make_set("cartpole", 4, device="cpu", seed=0, time_limit=4)  # an episode ends every 2 decisions
    replay = ReplayBuffer(ReplayConfig(num_tasks=2, capacity=64, obs_dim=world.obs_dim, action_dim=world.action_dim,
                                       num_worlds=4, batch_size=2, unroll_steps=1, td_steps=1))
    returns = EpisodeReturns(world.task_ids, 2, staggered=False)
    collector = Collector(world, replay, SEARCH, action_repeat=2, start_transitions=2, returns=returns,
                          generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = EZMModel(ModelConfig.cpu(obs_dim=world.obs_dim, action_dim=world.action_dim, num_tasks=2))
    collector.reset(stagger=False)
    forbid_host_sync(monkeypatch, "Collector.collect")
    infos = [collector.collect(model) for _ in range(4)]  # 1 warm-up decision, 3 searched
    monkeypatch.undo()
    assert replay.num_added().tolist() == [2 * 4 + 2 * 2, 2 * 4 + 2 * 2]  # transitions + final observations
    assert [bool(i["done"].all()) for i in infos] == [False, True, False, True]
    assert returns.count.tolist() == [4.0, 4.0]


# --- operators per unit (ezm_gpu.opcount) ------------------------------------------------------------------
# Kernel-running operators of one acting step and one update with the release search (N = 32, K = 16, k = 2),
# unroll 5 and n = 5, the cpu preset, the hard set's sizes, counted on the meta device with the reference
# tree. Measured at this commit with torch 2.13 (the version CI installs); an exact bound, so that a change
# which adds operators to the hot loop fails here (lower the bound when a change removes some).
ACT_KERNELS = 8146
UPDATE_KERNELS = 12028
HARD = dict(num_tasks=14, obs_dim=177, action_dim=61)


def test_count_ops_counts_what_reaches_the_backend():
    from ezm_gpu.opcount import count_ops

    x = torch.ones(3, 4)
    result, counts = count_ops(lambda t: (t + 1).relu().view(-1).sum(), x)
    assert float(result) == 24.0
    assert counts.by_op == {"aten::add.Tensor": 1, "aten::relu": 1, "aten::view": 1, "aten::sum": 1}
    assert (counts.total, counts.kernels, counts.flops) == (4, 3, 0)  # the view runs no kernel
    _, counts = count_ops(torch.mm, torch.ones(3, 4), torch.ones(4, 5))
    assert counts.flops == 2 * 3 * 4 * 5


def test_operator_counts_do_not_depend_on_the_batch():
    """The reason a count at a small size holds at 4096 worlds: no shape-dependent control flow."""
    from ezm_gpu.opcount import count_acting_step

    small = SearchSettings(num_simulations=4, num_root_actions=4, root_wide=3, num_top_actions=4)
    a, b = (count_acting_step("cpu", worlds, small, **HARD) for worlds in (3, 40))
    assert a.reference.by_op == b.reference.by_op and a.cuda_launches == b.cuda_launches


def test_acting_step_and_update_stay_within_their_launch_bounds():
    from ezm_gpu.opcount import count_acting_step, count_update

    acting = count_acting_step("cpu", 8, SearchSettings(), **HARD)
    update = count_update("cpu", 14, SearchSettings(), **HARD)
    for name, counts, bound in (("acting step", acting, ACT_KERNELS), ("update", update, UPDATE_KERNELS)):
        assert counts.reference.kernels <= bound, (
            f"the {name} now dispatches {counts.reference.kernels} kernel-running operators (bound {bound}); "
            f"most frequent: {counts.reference.top(12)}")
    # On CUDA every tree step is one Triton kernel: N selections, N backups and the halvings.
    assert acting.triton_tree_launches == update.triton_tree_launches == 32 + 32 + 3
    assert acting.cuda_launches < acting.reference.kernels - 3000


# --- torch.compile(fullgraph=True) ------------------------------------------------------------------------


def test_the_acting_step_compiles_as_one_graph_and_matches_eager():
    """With the counter-based generator (``ezm_gpu.rng.CounterRNG``: no torch.Generator object, which dynamo
    cannot trace) the whole acting step traces into one graph; compiled and eager give the same actions
    and root values from the same generator state, and both advance the generator alike."""
    from ezm_gpu.acting import act
    from ezm_gpu.rng import CounterRNG

    torch.manual_seed(0)
    model = EZMModel(ModelConfig.cpu(obs_dim=6, action_dim=2, num_tasks=2)).eval()
    obs, task_ids = torch.randn(8, 6), torch.arange(8) % 2

    def step(obs, task_ids, generator):
        out = act(model, obs, task_ids, SEARCH, generator)
        return out.actions, out.root_value

    eager_rng, compiled_rng = CounterRNG(1), CounterRNG(1)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch._dynamo.reset()
    for _ in range(2):  # the second call replays the compiled graph with the advanced counter
        expected, got = step(obs, task_ids, eager_rng), compiled(obs, task_ids, compiled_rng)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1.3e-6, atol=1e-5)  # float32
        assert torch.equal(eager_rng.counter, compiled_rng.counter)
