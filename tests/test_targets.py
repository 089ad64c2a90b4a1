"""Value targets on hand-written trajectories."""
import pytest
import torch

from ezm_gpu.targets import mixed_values, n_step_values


def _window(length, valid_steps, terminal_at=None):
    step_mask = torch.arange(length)[None] < valid_steps
    obs_mask = torch.arange(length + 1)[None] <= valid_steps  # the final observation counts
    terminal = torch.zeros(1, length + 1, dtype=torch.bool)
    if terminal_at is not None:
        terminal[0, terminal_at] = True
    return step_mask, obs_mask, terminal


def test_n_step_inside_an_episode():
    # L = K + n = 1 + 2; gamma 0.5; rewards 1, 2, 3; values of o_t..o_{t+3}: 10, 20, 30, 40.
    rewards, values = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    z = n_step_values(rewards, values, *_window(3, 3), discount=0.5, td_steps=2, unroll_steps=1)
    # z_t = 1 + 0.5*2 + 0.25*30 = 9.5;  z_{t+1} = 2 + 0.5*3 + 0.25*40 = 13.5
    assert z.tolist() == [[9.5, 13.5]]


def test_truncated_episode_bootstraps_from_its_final_observation():
    rewards, values = torch.tensor([[1.0, 2.0, 0.0, 0.0]]), torch.tensor([[10.0, 20.0, 30.0, 30.0, 30.0]])
    z = n_step_values(rewards, values, *_window(4, 2), discount=0.5, td_steps=2, unroll_steps=2)
    # Episode: steps 0, 1, final observation o_{t+2}. z_t = 1 + 0.5*2 + 0.25*30 = 9.5;
    # z_{t+1} = 2 + 0.5*30 = 17 (m = 1); z_{t+2} = V(o_{t+2}) = 30 (m = 0)
    assert z.tolist() == [[9.5, 17.0, 30.0]]


def test_terminated_episode_is_absorbing_and_past_the_end_is_zero():
    rewards, values = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[10.0, 20.0, 20.0, 20.0, 20.0]])
    z = n_step_values(rewards, values, *_window(4, 1, terminal_at=1), discount=0.5, td_steps=2, unroll_steps=2)
    # Terminated after one step: z_t = 1 + 0 ; z_{t+1} = 0 (absorbing); z_{t+2} past the end: 0
    assert z.tolist() == [[1.0, 0.0, 0.0]]


def test_window_too_short():
    with pytest.raises(ValueError, match="need K \\+ n = 7"):
        n_step_values(torch.zeros(1, 6), torch.zeros(1, 7), *_window(6, 6), 0.99, td_steps=5, unroll_steps=2)


def test_mixed_rule_switches_at_the_thresholds():
    n_step, search = torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([[2.0, 2.0], [2.0, 2.0]])
    age = torch.tensor([199_999, 200_000])
    assert torch.equal(mixed_values(n_step, search, age, num_updates=49_999), n_step)
    assert mixed_values(n_step, search, age, num_updates=50_000).tolist() == [[1.0, 1.0], [2.0, 2.0]]
