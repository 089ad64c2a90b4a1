"""The code paths that only run on CUDA, tested on a CPU-only machine where their logic allows it.

Devices: ``torch.device("cuda") != torch.device("cuda", 0)`` while tensors report ``cuda:0``; the same
mismatch exists on CPU (``cpu:0`` vs ``cpu``), so the normalisation is exercised for real on CPU and
with a patched ``torch.cuda`` for the CUDA index. Graph capture: the order of stream operations is
checked with recording stand-ins for torch's and Warp's stream/capture objects.
"""
import contextlib

import pytest
import torch

from ezm_gpu.config import ConfigError, TrainConfig, validate
from ezm_gpu.envs import canonical_device, make, make_set
from ezm_gpu.envs import capture as capture_module
from ezm_gpu.envs.capture import MIN_DRIVER_FOR_GRAPHS, capture_graph, check_graph_driver
from ezm_gpu.envs.device import check_device
from ezm_gpu.replay import ReplayBuffer, ReplayConfig
from ezm_gpu.train import resolve_device


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs whose current device is 1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


def test_cuda_without_index_becomes_the_current_device(two_gpus):
    assert canonical_device("cuda") == torch.device("cuda", 1)
    assert canonical_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert canonical_device("cuda:0") == torch.device("cuda", 0)
    assert canonical_device(None) == torch.device("cuda", 1)  # default: CUDA when available
    assert str(canonical_device("cuda")) == "cuda:1"  # the form a tensor on that GPU reports
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\), indices 0..1"):
        canonical_device("cuda:2")


def test_cpu_forms_are_one_device():
    for form in ("cpu", "cpu:0", torch.device("cpu", 0), torch.device("cpu")):
        device = canonical_device(form)
        assert device == torch.zeros(1, device=device).device == torch.device("cpu")
    assert torch.device("cpu", 0) != torch.device("cpu")  # the mismatch normalisation removes


def test_bad_devices_are_named(monkeypatch):
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        canonical_device("tpu")
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N', got 'meta'"):
        canonical_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device is available"):
        canonical_device("cuda")


def test_device_check_compares_canonical_devices(two_gpus):
    on_gpu0 = torch.empty(0)  # stands in for a tensor whose .device is cuda:0

    class Fake:
        device = torch.device("cuda", 0)

    check_device(Fake, canonical_device("cuda:0"), "action", "env")  # equal once normalised
    with pytest.raises(ValueError, match="action is on cuda:0, the env on cuda:1"):
        check_device(Fake, canonical_device("cuda"), "action", "env")
    with pytest.raises(ValueError, match="x is on cpu, the buffer on cuda:1"):
        check_device(on_gpu0, canonical_device("cuda"), "x", "buffer")


def test_training_device_setting(two_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="invalid device='cuda:5'"):
        resolve_device("cuda:5")
    validate(TrainConfig(device="cuda:1", tasks=["cartpole-balance"], envs=4))
    with pytest.raises(ConfigError, match="cuda:N"):
        validate(TrainConfig(device="gpu", tasks=["cartpole-balance"], envs=4))


def test_env_and_task_set_accept_their_own_tensors_on_an_indexed_device():
    """The CUDA defect on CPU: an env made on ``cpu:0`` (a device with an index) compared every action
    against ``cpu:0`` while tensors report ``cpu``, so every step raised."""
    env = make("cartpole-balance", 3, device="cpu:0", seed=0)
    assert env.device == torch.device("cpu")
    env.reset()
    obs, reward, *_ = env.step(torch.zeros(3, env.action_dim))
    assert obs.shape == (3, env.obs_dim) and bool((reward > 0).all())  # upright start: reward near 1
    tasks = make_set(["cartpole-balance", "cartpole-swingup"], 4, device=torch.device("cpu", 0))
    tasks.reset()
    obs, *_ = tasks.step(torch.zeros(4, tasks.action_dim))
    assert obs.device == tasks.device == torch.device("cpu")


def test_replay_accepts_its_own_tensors_on_an_indexed_device():
    buffer = ReplayBuffer(ReplayConfig(num_tasks=1, capacity=16, obs_dim=3, action_dim=2, num_worlds=2,
                                       batch_size=2, unroll_steps=1, td_steps=1), device="cpu:0")
    assert buffer.device == torch.device("cpu")
    task = torch.zeros(2, dtype=torch.int64)
    for _ in range(4):
        buffer.add(task, torch.ones(2, 3), torch.zeros(2, 2), torch.ones(2), torch.zeros(2, dtype=torch.bool),
                   torch.ones(2, 3))
    batch = buffer.sample()
    buffer.update_priorities(batch.indices, torch.ones_like(batch.weights), batch.stamps)
    assert int(buffer.size()[0]) == 8


# ------------------------------------------------------------------------------- CUDA graphs


def test_driver_check_needs_12_4():
    assert MIN_DRIVER_FOR_GRAPHS == (12, 4)
    for ok in ((12, 4), (12, 8), (13, 0)):
        check_graph_driver(ok)
    for old in ((12, 3), (11, 8)):
        with pytest.raises(RuntimeError, match=r"supports CUDA 1\d\.\d; .* need 12\.4 or newer"):
            check_graph_driver(old)


def test_missing_driver_is_a_clear_error(monkeypatch):
    import warp as wp

    monkeypatch.setattr(wp, "get_cuda_driver_version", lambda: None)
    with pytest.raises(RuntimeError, match="no CUDA driver found"):
        check_graph_driver()


def test_env_on_cuda_with_an_old_driver_fails_before_any_work(two_gpus, monkeypatch):
    import warp as wp

    monkeypatch.setattr(wp, "get_cuda_driver_version", lambda: (12, 2))
    with pytest.raises(RuntimeError, match="need 12.4 or newer"):
        make("cartpole-balance", 2, device="cuda")


def test_capture_runs_on_a_side_stream_ordered_after_the_current_one(monkeypatch):
    events = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(f"{self.name} waits {other.name}")

    legacy = Stream("legacy")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: legacy)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream("side"))

    class Capture:
        graph = "graph"

        def __enter__(self):
            events.append("capture begins")
            return self

        def __exit__(self, *exc):
            events.append("capture ends")

    import warp as wp

    current = {"stream": "legacy"}

    @contextlib.contextmanager
    def scoped_stream(stream):
        previous, current["stream"] = current["stream"], stream
        events.append(f"warp stream {stream}")
        yield
        current["stream"] = previous

    monkeypatch.setattr(wp, "stream_from_torch", lambda stream: stream.name)
    monkeypatch.setattr(wp, "ScopedStream", scoped_stream)
    monkeypatch.setattr(wp, "ScopedCapture", Capture)

    def record():
        events.append(f"record on {current['stream']}")

    captured = capture_graph(torch.device("cuda", 0), record)
    assert events == ["side waits legacy", "warp stream side", "capture begins", "record on side", "capture ends",
                      "legacy waits side"]
    assert captured.graph == "graph" and captured.stream.name == "side"  # the stream lives with the graph
    launched = []
    monkeypatch.setattr(wp, "capture_launch", lambda graph: launched.append(graph))
    captured.launch()
    assert launched == ["graph"]
    assert capture_module.__doc__ and "12.4" in capture_module.__doc__
