"""docs/examples/alphazero_tictactoe.py: its game rules against a plain-Python tic-tac-toe, and the
example run the way docs/kernels.md shows it (a subprocess), trained and untrained, against the
uniformly random player.

About 45 s on 2 CPU cores: the trained run (the example's defaults, ~30 s) dominates.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "alphazero_tictactoe.py"

# The example's defaults (8 iterations, 1024 games, 24 simulations, 400 evaluation games), pinned to the
# CPU and seed 0: the runs quoted in docs/kernels.md#measured-results.
DEFAULTS = ["--seed", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def az():
    """The example imported as a module (its rules and main), without running it."""
    spec = importlib.util.spec_from_file_location("alphazero_tictactoe", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# A plain-Python tic-tac-toe: cells are "X", "O" or " "; X moves first.
# ------------------------------------------------------------------------------------------------

REF_LINES = ([(3 * r, 3 * r + 1, 3 * r + 2) for r in range(3)] + [(c, c + 3, c + 6) for c in range(3)]
             + [(0, 4, 8), (2, 4, 6)])


def ref_winner(cells):
    for a, b, c in REF_LINES:
        if cells[a] != " " and cells[a] == cells[b] == cells[c]:
            return cells[a]
    return None


def ref_over(cells):
    return ref_winner(cells) is not None or " " not in cells


def ref_to_move(cells):
    return "X" if cells.count("X") == cells.count("O") else "O"


def ref_canonical(cells):
    """The example's board: +1 the player to move, -1 the opponent, 0 empty."""
    me = ref_to_move(cells)
    return [0.0 if c == " " else (1.0 if c == me else -1.0) for c in cells]


def reachable_positions():
    """Every position of legal play (5478 of them), the finished ones included."""
    seen, stack = set(), [(" ",) * 9]
    while stack:
        cells = stack.pop()
        if cells in seen:
            continue
        seen.add(cells)
        if not ref_over(cells):
            me = ref_to_move(cells)
            stack.extend(cells[:i] + (me,) + cells[i + 1:] for i in range(9) if cells[i] == " ")
    return sorted(seen)


POSITIONS = reachable_positions()


def boards(positions):
    return torch.tensor([ref_canonical(p) for p in positions])


# ------------------------------------------------------------------------------------------------
# The batched rules
# ------------------------------------------------------------------------------------------------

def test_reference_counts():
    assert len(POSITIONS) == 5478
    assert sum(ref_over(p) for p in POSITIONS) == 958  # the known number of terminal positions


def test_lines_are_the_eight_lines(az):
    assert az.LINES.shape == (8, 3)
    assert {tuple(sorted(line)) for line in az.LINES.tolist()} == set(REF_LINES)


def test_terminal_and_legal_moves_on_every_reachable_position(az):
    board = boards(POSITIONS)
    assert az.is_terminal(board).tolist() == [ref_over(p) for p in POSITIONS]
    # The winner, if any, is always the player who just moved: -1 stones in canonical form.
    assert az.opponent_won(board).tolist() == [ref_winner(p) is not None for p in POSITIONS]
    assert all(ref_winner(p) in (None, "X" if ref_to_move(p) == "O" else "O") for p in POSITIONS)
    expected = [[(not ref_over(p)) and c == " " for c in p] for p in POSITIONS]
    assert az.legal_moves(board).tolist() == expected


def test_step_matches_reference_for_every_position_and_action(az):
    positions = [p for p in POSITIONS for _ in range(9)]
    actions = [a for _ in POSITIONS for a in range(9)]
    next_board, reward, done = az.step(boards(positions), torch.tensor(actions))
    expected_board, expected_reward, expected_done = [], [], []
    for cells, a in zip(positions, actions):
        if ref_over(cells):  # a finished game: nothing happens
            expected_board.append(ref_canonical(cells)), expected_reward.append(0.0), expected_done.append(True)
        elif cells[a] != " ":  # an occupied cell in a live game: forfeit
            expected_board.append(ref_canonical(cells)), expected_reward.append(-1.0), expected_done.append(True)
        else:
            me = ref_to_move(cells)
            after = cells[:a] + (me,) + cells[a + 1:]
            expected_board.append(ref_canonical(after))  # seen by the next player to move
            expected_reward.append(1.0 if ref_winner(after) == me else 0.0)
            expected_done.append(ref_over(after))
    assert next_board.tolist() == expected_board
    assert reward.tolist() == expected_reward
    assert done.tolist() == expected_done


def test_known_boards(az):
    def canonical(rows):
        return boards([tuple("".join(rows).replace(".", " "))])

    x_won_diagonal = canonical(["XO.", "OX.", "..X"])  # O to move, X has won
    assert az.is_terminal(x_won_diagonal).item() and az.opponent_won(x_won_diagonal).item()
    assert not az.legal_moves(x_won_diagonal).any()
    draw = canonical(["XOX", "XOO", "OXX"])
    assert az.is_terminal(draw).item() and not az.opponent_won(draw).item()
    live = canonical(["XO.", "...", "..."])  # X to move
    assert not az.is_terminal(live).item()
    assert az.legal_moves(live)[0].tolist() == [False, False] + [True] * 7
    # X completes the left column: reward +1 for X, game over, O sees X's stones as -1.
    x_to_win = canonical(["XO.", "XO.", "..."])
    next_board, reward, done = az.step(x_to_win, torch.tensor([6]))
    assert reward.item() == 1.0 and done.item()
    assert next_board[0].tolist() == [-1, 1, 0, -1, 1, 0, -1, 0, 0]
    # Seen from O, to move after that: over, X (now -1) owns the column, no legal move.
    o_lost = canonical(["XO.", "XO.", "X.."])
    assert o_lost[0].tolist() == next_board[0].tolist()
    assert az.opponent_won(o_lost).item() and not az.legal_moves(o_lost).any()


def test_reset_finished(az):
    board = boards([POSITIONS[100], POSITIONS[200], POSITIONS[300]])
    done = torch.tensor([True, False, True])
    reset = az.reset_finished(board, done)
    assert reset[0].tolist() == [0.0] * 9 and reset[2].tolist() == [0.0] * 9
    assert reset[1].tolist() == board[1].tolist()
    assert az.new_boards(4).tolist() == [[0.0] * 9] * 4


def test_episode_targets_are_the_outcome_from_the_mover_view(az):
    """Samples of a finished game: value +1 where the winner was to move, -1 elsewhere; draws 0."""
    selfplay = az.SelfPlay(2, torch.device("cpu"))
    # Game 0: X wins in 5 moves (0, 3, 1, 4, 2); game 1 the same with O's moves, unfinished after 4.
    for move, (a0, a1) in enumerate([(0, 0), (3, 3), (1, 1), (4, 4), (2, 8)]):
        rows = torch.arange(2)
        selfplay.obs[rows, selfplay.moves] = selfplay.board
        selfplay.policy[rows, selfplay.moves] = torch.full((2, 9), float(move))
        selfplay.board, reward, done = az.step(selfplay.board, torch.tensor([a0, a1]))
        selfplay.moves += 1
        if done.any():
            obs, policy, value = selfplay._finish(done, reward)
    assert done.tolist() == [True, False]
    assert value.tolist() == [1.0, -1.0, 1.0, -1.0, 1.0]  # X, O, X, O, X to move
    assert policy[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert obs[0].tolist() == [0.0] * 9 and obs[1].tolist() == [-1.0] + [0.0] * 8
    assert selfplay.games_finished == 1


# ------------------------------------------------------------------------------------------------
# The example end to end, as a user runs it
# ------------------------------------------------------------------------------------------------

def run_example(*args):
    """python docs/examples/alphazero_tictactoe.py ARGS; returns the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as outside the tests
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained():
    return run_example(*DEFAULTS)


@pytest.fixture(scope="module")
def untrained():
    return run_example("--iterations", "0", *DEFAULTS)


def test_trained_agent_beats_the_random_player(trained):
    """Measured over seeds 0-4: win 0.92-0.95, loss 0-0.0025 with search; the network alone loses 1-2%."""
    assert trained["eval_games"] == 400 and trained["iterations"] == 8 and trained["self_play_games"] > 8000
    assert trained["win"] + trained["draw"] + trained["loss"] == pytest.approx(1.0, abs=1e-3)
    assert trained["win"] > 0.85, trained
    assert trained["loss"] < 0.02, trained
    assert trained["first"]["win"] > 0.9, trained  # moving first it should almost always win
    assert trained["second"]["loss"] < 0.04, trained
    # The policy head alone (no search) has learned to play too.
    assert trained["network"]["win"] > 0.8 and trained["network"]["loss"] < 0.06, trained


def test_untrained_agent_is_clearly_worse(trained, untrained):
    """The same evaluation with the untrained network (seed 0: search win 0.72 / loss 0.165, network alone
    win 0.445 / loss 0.37): without this the test above could pass with a search that learned nothing."""
    assert untrained["iterations"] == 0 and untrained["self_play_games"] == 0
    assert untrained["win"] < trained["win"] - 0.07, (untrained, trained)
    assert untrained["loss"] > trained["loss"] + 0.05, (untrained, trained)
    assert untrained["network"]["win"] < trained["network"]["win"] - 0.2, (untrained, trained)
    assert untrained["network"]["loss"] > 0.15, untrained


def test_main_is_reproducible(az):
    """Same seed, same result (in-process, tiny settings: 64 games of self-play, 2 updates)."""
    tiny = ["--iterations", "1", "--games", "64", "--moves", "9", "--updates", "2", "--simulations", "4",
            "--eval-games", "32", "--device", "cpu"]

    def outcome(result):
        return {k: v for k, v in result.items() if not k.endswith("seconds")}

    threads = torch.get_num_threads()  # main sets the process's thread count (--threads)
    try:
        first = outcome(az.main([*tiny, "--seed", "3"]))
        assert outcome(az.main([*tiny, "--seed", "3"])) == first
    finally:
        torch.set_num_threads(threads)
    assert first["self_play_games"] == 64 and first["iterations"] == 1
