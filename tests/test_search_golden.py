"""A search worked out by hand from search.md's formulas: 2 trees, K=4, k=2, N=6, A=1, gamma=0.5.

Model: reward = the action taken, value = 0, every new node's children have actions +0.5 / -0.5 with
equal priors. Root actions are [0.5, -0.25, 0.75, 0] in both trees; tree 0 has no priors or noise,
tree 1 has p = [0, 1, 0, 0], g = [0, 0, 0, 3] and v0 = 1.

Schedule (m = 4, phase_num 2): sims 0-3 visit the 4 candidates once, halving to 2 after sim 3; the
last phase ends at N = 6: sims 4, 5 visit the 2 survivors, halving to 1 after sim 5.

Tree 0: survivors 0,1,2,3 (all g+p tie). Leaves 1-4 (depth 1) back up G = r, then gamma*r at the
root: min -0.25 (leaf 2), max 0.75 (leaf 3). Halving after sim 3: Q = r = [.5, -.25, .75, 0],
q_hat = (Q + .25) / 1 = [.75, 0, 1, .25], sigma = (50 + 1) * .1 * q_hat = [3.825, 0, 5.1, 1.275]
-> survivors [2, 0]. Sim 4: slot 2 (both visited once, 2 earlier) -> node 3; its two unexpanded
children tie (v_mix = V(3) = 0) -> slot 0: node 5 under node 3, r = .5: G = .5, then .75 + .5*.5 = 1
(new max), root += 1. Sim 5: slot 0 (1 visit < 2) -> node 1 -> slot 0: node 6, G = .5, node 1 gets
.5 + .25 = .75, root += .75. W(0) = 0 + .5 - .25 + .75 + 0 + 1 + .75 = 2.75 over 7 visits.
Final: Q = [.5 + .5*.25, -.25, .75 + .5*.25, 0] = [.625, -.25, .875, 0]; range 1.25;
q_hat = [.7, 0, .9, .2]; sigma = 5.2 * q_hat = [3.64, 0, 4.68, 1.04] -> slot 2.

Tree 1: survivors by g+p: [3, 1, 0, 2]; leaves 1-4 are slots 3, 1, 0, 2. After sim 3 the scores
g + p + sigma are [3.825, 1, 5.1, 3 + 1.275] -> survivors [2, 3]. Sim 4: slot 2 -> node 4 -> node 5
(G = .5, node 4 gets .75 + .25 = 1); sim 5: slot 3 -> node 1 -> node 6 (node 1 gets 0 + .25).
W(0) = 1 + 0 - .25 + .5 + .75 + 1 + .25 = 3.25. Final Q = [.5, -.25, .875, .125],
q_hat = [.6, 0, .9, .3], sigma = [3.12, 0, 4.68, 1.56]; scores slot 2: 4.68 > slot 3: 3 + 1.56.
"""
import pytest
import torch

from ezm_gpu.kernels import SearchConfig, sampled_gumbel_search

CONFIG = SearchConfig(num_simulations=6, num_top_actions=4, num_child_actions=2, discount=0.5, c_visit=50.0,
                      c_scale=0.1, value_delta=0.01)


def _model(embedding, action):
    batch = embedding.shape[0]
    children = torch.tensor([[0.5], [-0.5]]).expand(batch, 2, 1)
    return embedding, action[:, 0], torch.zeros(batch), children, torch.zeros(batch, 2)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hand_worked_search(backend):
    root_actions = torch.tensor([0.5, -0.25, 0.75, 0.0]).reshape(1, 4, 1).repeat(2, 1, 1)
    out = sampled_gumbel_search(
        root_embedding=torch.zeros(2, 1), root_value=torch.tensor([0.0, 1.0]), root_actions=root_actions,
        root_prior_logits=torch.tensor([[0.0, 0, 0, 0], [0, 1, 0, 0]]),
        gumbel=torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 3]]), recurrent_fn=_model, config=CONFIG, backend=backend)
    tree = out.tree
    assert tree.node_parent.tolist() == [[-1, 0, 0, 0, 0, 3, 1], [-1, 0, 0, 0, 0, 4, 1]]
    assert tree.node_slot.tolist() == [[-1, 0, 1, 2, 3, 0, 0], [-1, 3, 1, 0, 2, 0, 0]]
    assert tree.node_visits.tolist() == [[7, 2, 1, 2, 1, 1, 1], [7, 2, 1, 1, 2, 1, 1]]
    torch.testing.assert_close(tree.node_value_sum, torch.tensor([[2.75, 0.5, 0, 0.5, 0, 0, 0],
                                                                  [3.25, 0.5, 0, 0, 0.5, 0, 0]]))
    torch.testing.assert_close(tree.minmax_lo, torch.tensor([-0.25, -0.25]))
    torch.testing.assert_close(tree.minmax_hi, torch.tensor([1.0, 1.0]))
    assert out.visit_counts.tolist() == [[2, 1, 2, 1], [1, 1, 2, 2]]
    assert out.action_index.tolist() == [2, 2]
    assert out.action.tolist() == [[0.75], [0.75]]
    assert out.survivors.tolist() == [[2, -1, -1, -1], [2, -1, -1, -1]]
    assert out.considered.tolist() == [[False, False, True, False]] * 2
    torch.testing.assert_close(out.root_value, torch.tensor([2.75 / 7, 3.25 / 7]))
    torch.testing.assert_close(out.completed_q, torch.tensor([[0.625, -0.25, 0.875, 0.0], [0.5, -0.25, 0.875, 0.125]]))
    scores = torch.tensor([[3.64, 0.0, 4.68, 1.04], [3.12, 1.0, 4.68, 1.56]])
    torch.testing.assert_close(out.pi_prime_scores, scores)
    torch.testing.assert_close(out.action_weights, torch.softmax(scores, 1))
