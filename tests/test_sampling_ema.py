"""Search candidate sampling and EMA copies."""
import pytest
import torch

from ezm_gpu.ema import EMA
from ezm_gpu.sampling import ACTION_CLIP, WIDE_SCALE, sample_candidates


def test_candidates_shapes_clip_and_masks():
    mean, log_std = torch.zeros(3, 5), torch.zeros(3, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True] * 5])
    g = torch.Generator().manual_seed(0)
    out = sample_candidates(mean + 4.0, log_std, 16, 12, mask, g)  # tanh(4) > 0.999: clipped
    assert out.shape == (3, 16, 5)
    assert float(out.max()) == pytest.approx(ACTION_CLIP) and torch.equal(out[1, :, 3:], torch.zeros(16, 2))


def test_wide_share_uses_three_times_the_std():
    g = torch.Generator().manual_seed(1)
    mean, log_std = torch.zeros(4000, 1), torch.full((4000, 1), -3.0)  # small std: tanh ~ identity
    out = sample_candidates(mean, log_std, 16, 12, generator=g)
    narrow, wide = torch.atanh(out[:, :4]).std(), torch.atanh(out[:, 4:]).std()
    std = torch.tensor(-3.0).exp()
    assert narrow == pytest.approx(float(std), rel=0.03) and wide == pytest.approx(float(WIDE_SCALE * std), rel=0.03)
    same = sample_candidates(mean, log_std, 16, 12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, same)  # reproducible with the generator


def test_candidate_errors():
    with pytest.raises(ValueError, match="num_wide <= num"):
        sample_candidates(torch.zeros(1, 2), torch.zeros(1, 2), 2, 3)
    with pytest.raises(ValueError, match=r"must both be \[B, A\]"):
        sample_candidates(torch.zeros(2), torch.zeros(2), 2, 1)


def test_ema_averages_the_whole_state_dict():
    """The release averages every entry: weights, BatchNorm statistics, the observation normaliser."""
    from ezm_gpu.model import RunningObsNorm

    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1), RunningObsNorm(1, init_count=100.0))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = EMA(model, tau=0.25, interval=2)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(7.0)
        model[1].running_var.fill_(5.0)
        model[1].num_batches_tracked.fill_(9)
    model[2].update(torch.tensor([[4.0], [6.0]]))  # mean 0 -> 5 * 2/102, count 100 -> 102
    assert not ema.update(model, step=1) and float(ema.copy[0].weight[0, 0]) == 1.0
    assert ema.update(model, step=2)
    assert float(ema.copy[0].weight[0, 0]) == pytest.approx(1.0 + 0.25 * (3.0 - 1.0))  # 1.5
    assert float(ema.copy[1].running_mean[0]) == pytest.approx(0.25 * 7.0)  # from 0
    assert float(ema.copy[1].running_var[0]) == pytest.approx(1.0 + 0.25 * (5.0 - 1.0))  # from 1
    assert int(ema.copy[1].num_batches_tracked) == 9  # a counter: copied
    assert float(ema.copy[2].mean[0]) == pytest.approx(0.25 * float(model[2].mean[0]))
    assert float(ema.copy[2].count) == pytest.approx(100.0 + 0.25 * 2.0)
    assert ema.copy[2].count.dtype == torch.float64
    assert not any(p.requires_grad for p in ema.copy.parameters())
    clone = EMA(model, tau=0.5, interval=1)
    clone.load_state_dict(ema.state_dict())
    assert float(clone.copy[0].weight[0, 0]) == pytest.approx(1.5) and clone.tau == 0.25
