"""AlphaZero-style self-play on tic-tac-toe with ``ezm_gpu.kernels.gumbel_muzero_policy``.

Run it from the repository root (the venv with ezm-gpu installed active)::

    python docs/examples/alphazero_tictactoe.py                  # train, then play the random player
    python docs/examples/alphazero_tictactoe.py --iterations 0   # the untrained agent, for comparison
    python docs/examples/alphazero_tictactoe.py --device cuda    # the same on a GPU (Triton search kernels)

It is the whole AlphaZero loop in one file, for thousands of games at once:

1. The game: tic-tac-toe as batched torch operations on a [B, 9] board (``step``, ``legal_moves``,
   ``is_terminal``); finished games restart immediately (auto-reset), so every search is over B live games.
2. A tiny network: an MLP with a policy head (9 logits) and a tanh value head.
3. Self-play: every move of every game is chosen by Gumbel MuZero search (``gumbel_muzero_policy``) whose
   ``recurrent_fn`` steps the TRUE game (AlphaZero, not MuZero: no learned dynamics) and asks the
   network for priors and values at the new positions.
4. Training: Adam on (observation, search policy, final outcome) samples drawn from a replay of the most
   recent finished games.
5. Evaluation: the agent (search with ``gumbel_scale=0``) against a uniformly random legal player,
   half of the games moving first and half moving second; then the policy head alone (no search).

With the defaults a run takes about 30 s on one CPU core; the trained agent then wins ~94% of its games
against the random player and loses almost none, the untrained one (``--iterations 0``) wins ~77% and
loses ~12% (docs/kernels.md, "Measured results"). The last line printed is JSON with the win/draw/loss
rates (from the agent's point of view), so scripts and tests can read it; ``main(argv)`` returns the
same dictionary. Everything random draws
from one ``torch.Generator`` seeded by ``--seed`` (and the network's initialisation from
``torch.manual_seed(seed)``), so a run is reproducible on the same device and thread count.

See docs/kernels.md ("Using the kernels in your project") for the API and the conventions used here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ezm_gpu.kernels import RecurrentFnOutput, RootFnOutput, gumbel_muzero_policy

# ---------------------------------------------------------------------------------------------------
# The game, batched.
#
# A state is ONE float tensor board [B, 9] seen from the player to move ("canonical form"):
# +1 = a stone of the player to move, -1 = a stone of the opponent, 0 = empty; cell = 3 * row + col.
# After every move the board is negated, so the player to move always sees their own stones as +1.
# This has two benefits: one network serves both players (it always plays "+1"), and the board alone
# is the whole state, so it can be the search's embedding directly. Who is X and who is O is only
# needed for bookkeeping outside the search (the evaluation below).
# ---------------------------------------------------------------------------------------------------

NUM_ACTIONS = 9

# The 8 lines of three cells: 3 rows, 3 columns, 2 diagonals. board[:, LINES] is [B, 8, 3].
LINES = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8],
                      [0, 3, 6], [1, 4, 7], [2, 5, 8],
                      [0, 4, 8], [2, 4, 6]])


def new_boards(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """B empty boards [B, 9] (X, the first player, to move)."""
    return torch.zeros(batch, NUM_ACTIONS, device=device)


def line_sums(board: torch.Tensor) -> torch.Tensor:
    """[B, 8]: the sum of each line; +3 = three stones of the player to move, -3 = of the opponent."""
    return board[:, LINES.to(board.device)].sum(-1)


def opponent_won(board: torch.Tensor) -> torch.Tensor:
    """[B] bool: the player who just moved completed a line (their stones are -1 after the flip).

    The player to move can never own a complete line: the game would have ended before their turn.
    """
    return (line_sums(board) == -3).any(1)


def is_terminal(board: torch.Tensor) -> torch.Tensor:
    """[B] bool: the game is over (a line is complete, or the board is full: a draw)."""
    return opponent_won(board) | (board != 0).all(1)


def legal_moves(board: torch.Tensor) -> torch.Tensor:
    """[B, 9] bool: the empty cells of live games; a finished game has no legal move."""
    return (board == 0) & ~is_terminal(board)[:, None]


def step(board: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plays action [B] (int64 cell) in every game. Returns (next_board, reward, done), all [B]-batched.

    reward is for the player who moved: +1 if the move completed a line, else 0. done: the next state is
    terminal. Two cases never met in real play, but met inside a search tree, are defined too:
      - a move in a finished game changes nothing: reward 0, done (the search may step "past" the end);
      - an illegal move (occupied cell) in a live game forfeits it: reward -1, done, board unchanged.
    """
    action = action.long()[:, None]
    was_over = is_terminal(board)
    legal = (board.gather(1, action)[:, 0] == 0) & ~was_over
    placed = board.scatter(1, action, 1.0)  # the mover's stone is +1 in canonical form
    won = legal & (line_sums(placed) == 3).any(1)
    next_board = torch.where(legal[:, None], -placed, board)  # negate: the opponent is now to move
    reward = won.float() - (~legal & ~was_over).float()
    done = ~legal | is_terminal(next_board)
    return next_board, reward, done


def reset_finished(board: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Auto-reset: finished games [done] start again from the empty board, the others are unchanged."""
    return board.masked_fill(done[:, None], 0.0)


# ---------------------------------------------------------------------------------------------------
# The network: f(board) = (policy logits [B, 9], value [B] in [-1, 1]), both for the player to move.
# ---------------------------------------------------------------------------------------------------

class PolicyValueNet(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        # Two input planes (my stones, the opponent's stones) rather than one {-1, 0, 1} plane: the MLP
        # then does not have to learn that -1 and +1 are different kinds of thing, not opposites.
        self.body = nn.Sequential(nn.Linear(2 * NUM_ACTIONS, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.policy_head = nn.Linear(hidden, NUM_ACTIONS)
        self.value_head = nn.Linear(hidden, 1)

    def forward(self, board: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        planes = torch.cat([(board == 1).float(), (board == -1).float()], dim=1)
        h = self.body(planes)
        return self.policy_head(h), torch.tanh(self.value_head(h)).squeeze(1)


# ---------------------------------------------------------------------------------------------------
# The search's model of the world: recurrent_fn(embedding, action) -> (RecurrentFnOutput, next_embedding)
# ---------------------------------------------------------------------------------------------------

def make_recurrent_fn(net: PolicyValueNet):
    """The recurrent_fn for gumbel_muzero_policy: the true rules for the transition, the net for the rest.

    The conventions are mctx's for two-player zero-sum games (as in pgx's AlphaZero example): reward is
    for the player who took the action, value is for the player to move at the new state, and
    discount = -1 turns the child's value into the parent player's point of view. When the new state
    is terminal, discount = 0 and value = 0: the game's return is the reward alone, and nothing the
    search does below a finished game (it may select "moves" there) can leak into the parent's Q.
    """

    @torch.no_grad()
    def recurrent_fn(board: torch.Tensor, action: torch.Tensor):
        next_board, reward, done = step(board, action)
        logits, value = net(next_board)
        # Illegal moves get (practically) zero prior, as in mctx/pgx. A finished game has no legal
        # move at all; its priors are left unmasked so that its softmax stays well defined (unused).
        illegal = ~legal_moves(next_board) & ~done[:, None]
        logits = logits.masked_fill(illegal, torch.finfo(logits.dtype).min)
        value = value.masked_fill(done, 0.0)
        discount = torch.where(done, 0.0, -1.0)
        output = RecurrentFnOutput(reward=reward, discount=discount, prior_logits=logits, value=value)
        return output, next_board

    return recurrent_fn


def search(net: PolicyValueNet, board: torch.Tensor, simulations: int, generator: torch.Generator,
           gumbel_scale: float = 1.0):
    """One Gumbel MuZero search from every board [B, 9] (live games). Returns its PolicyOutput."""
    with torch.no_grad():
        logits, value = net(board)
    root = RootFnOutput(prior_logits=logits, value=value, embedding=board)
    return gumbel_muzero_policy(
        root, make_recurrent_fn(net), simulations,
        invalid_actions=~legal_moves(board),  # True = illegal: never searched, never chosen
        max_num_considered_actions=NUM_ACTIONS,  # tic-tac-toe is small: consider every legal move
        gumbel_scale=gumbel_scale,  # 1.0 in self-play (exploration), 0.0 when evaluating
        generator=generator)


# ---------------------------------------------------------------------------------------------------
# Self-play and its training samples.
# ---------------------------------------------------------------------------------------------------

class SelfPlay:
    """B games played against themselves, each move chosen by search, restarted as soon as they end.

    A game's positions and search policies wait in a per-game episode buffer until the game ends;
    then its outcome gives every position its value target: z, the last mover's result (+1 won, 0 draw),
    where that player was to move, -z where the other was. The finished game leaves as training
    samples. No position is wasted, however the moves of one ``play`` call fall across game boundaries.
    """

    def __init__(self, games: int, device: torch.device):
        self.board = new_boards(games, device)
        self.moves = torch.zeros(games, dtype=torch.long, device=device)  # moves played in each game
        self.obs = torch.zeros(games, NUM_ACTIONS, NUM_ACTIONS, device=device)  # [B, move, 9]
        self.policy = torch.zeros(games, NUM_ACTIONS, NUM_ACTIONS, device=device)  # [B, move, 9]
        self.games_finished = 0

    def play(self, net: PolicyValueNet, num_moves: int, simulations: int, generator: torch.Generator):
        """Plays num_moves moves in every game; returns the samples (obs, policy, value) of the games
        that ended, as [n, 9], [n, 9], [n] tensors."""
        samples = []
        rows = torch.arange(self.board.shape[0], device=self.board.device)
        for _ in range(num_moves):
            out = search(net, self.board, simulations, generator)
            # Record the position and the improved policy softmax(prior + completed Q) as the target.
            self.obs[rows, self.moves] = self.board
            self.policy[rows, self.moves] = out.action_weights
            self.board, reward, done = step(self.board, out.action)
            self.moves += 1
            if done.any():
                samples.append(self._finish(done, reward))
            self.board = reset_finished(self.board, done)
            self.moves = self.moves.masked_fill(done, 0)
        if not samples:
            empty = self.obs.new_zeros(0, NUM_ACTIONS)
            return empty, empty.clone(), self.obs.new_zeros(0)
        obs, policy, value = zip(*samples)
        return torch.cat(obs), torch.cat(policy), torch.cat(value)

    def _finish(self, done: torch.Tensor, reward: torch.Tensor):
        """Samples of the games that just ended: reward is the last mover's (+1 win, 0 draw)."""
        moves = self.moves[done]  # [D] game lengths
        index = torch.arange(NUM_ACTIONS, device=moves.device)[None, :]  # [1, 9] move number
        played = index < moves[:, None]  # [D, 9]: which slots hold positions of this game
        # The player to move at move i is the last mover iff (length - 1 - i) is even.
        same_player = (moves[:, None] - 1 - index) % 2 == 0
        z = reward[done][:, None]
        value = torch.where(same_player, z, -z)
        self.games_finished += int(done.sum())
        return self.obs[done][played], self.policy[done][played], value[played]


class Replay:
    """The most recent `capacity` samples (a FIFO), sampled uniformly."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.obs = self.policy = self.value = None

    def add(self, obs: torch.Tensor, policy: torch.Tensor, value: torch.Tensor):
        if self.obs is None:
            self.obs, self.policy, self.value = obs, policy, value
        else:
            self.obs = torch.cat([self.obs, obs])[-self.capacity:]
            self.policy = torch.cat([self.policy, policy])[-self.capacity:]
            self.value = torch.cat([self.value, value])[-self.capacity:]

    def __len__(self):
        return 0 if self.obs is None else len(self.obs)

    def sample(self, batch: int, generator: torch.Generator):
        index = torch.randint(len(self), (batch,), generator=generator, device=generator.device)
        return self.obs[index], self.policy[index], self.value[index]


def train_step(net: PolicyValueNet, optimizer: torch.optim.Optimizer, obs, policy_target, value_target):
    """One Adam step on AlphaZero's loss: cross-entropy to the search policy + squared value error."""
    logits, value = net(obs)
    policy_loss = -(policy_target * F.log_softmax(logits, dim=1)).sum(1).mean()
    value_loss = F.mse_loss(value, value_target)
    optimizer.zero_grad(set_to_none=True)
    (policy_loss + value_loss).backward()
    optimizer.step()
    return policy_loss.item(), value_loss.item()


# ---------------------------------------------------------------------------------------------------
# Evaluation against a uniformly random legal player.
# ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def play_vs_random(net: PolicyValueNet, games: int, agent_first: bool, simulations: int,
                   generator: torch.Generator, device: torch.device, use_search: bool = True) -> dict:
    """Plays `games` games, the agent moving first or second; returns its win/draw/loss rates.

    The agent searches with gumbel_scale=0 (no noise: its best move, as mctx recommends for evaluation
    on perfect-information games), or, with use_search=False, plays the network's most probable legal
    move (what training taught the policy head, without any search). All games move in lockstep, so at
    each ply it is the agent's turn in every game or in none; a game that has ended stays as it is.
    """
    board = new_boards(games, device)
    result = torch.zeros(games, device=device)  # +1 agent won, -1 agent lost, 0 draw (or not over yet)
    over = torch.zeros(games, dtype=torch.bool, device=device)
    for ply in range(NUM_ACTIONS):
        agent_to_move = (ply % 2 == 0) == agent_first
        legal = legal_moves(board)
        if agent_to_move and use_search:
            # Finished games have no legal move; let them search an empty board (their move is a no-op).
            live = board.masked_fill(over[:, None], 0.0)
            action = search(net, live, simulations, generator, gumbel_scale=0.0).action
        elif agent_to_move:
            logits, _ = net(board)
            action = logits.masked_fill(~legal, torch.finfo(logits.dtype).min).argmax(1)
        else:
            noise = torch.rand(games, NUM_ACTIONS, generator=generator, device=device)
            action = noise.masked_fill(~legal, -1.0).argmax(1)  # uniform over the legal moves
        board, reward, done = step(board, action)
        ended_now = done & ~over
        result = torch.where(ended_now, reward if agent_to_move else -reward, result)
        over |= done
    assert bool(over.all()), "tic-tac-toe lasts at most 9 moves"
    return {"win": (result > 0).sum().item(), "draw": (result == 0).sum().item(), "loss": (result < 0).sum().item()}


def evaluate(net: PolicyValueNet, games: int, simulations: int, generator: torch.Generator, device: torch.device,
             use_search: bool = True) -> dict:
    """Half of the games with the agent moving first, half second: the rates overall and per side."""
    first = play_vs_random(net, games // 2, True, simulations, generator, device, use_search)
    second = play_vs_random(net, games - games // 2, False, simulations, generator, device, use_search)

    def rates(counts):
        total = sum(counts.values())
        return {key: round(count / total, 4) for key, count in counts.items()}

    return {**rates({key: first[key] + second[key] for key in first}), "first": rates(first), "second": rates(second)}


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--iterations", type=int, default=8, help="self-play + training iterations")
    parser.add_argument("--games", type=int, default=1024, help="self-play games played at once")
    parser.add_argument("--moves", type=int, default=9, help="moves of every game per iteration")
    parser.add_argument("--simulations", type=int, default=24, help="search simulations per move")
    parser.add_argument("--updates", type=int, default=400, help="Adam steps per iteration")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--replay", type=int, default=40_000, help="replay capacity (positions)")
    parser.add_argument("--eval-games", type=int, default=400, help="games against the random player")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (tiny tensors: more threads cost more than they save)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    # Every tensor here is tiny ([B, 9] boards, a 128-wide MLP): torch's intra-op threads cost more in
    # synchronisation than they save, and far more when the cores are shared with other work.
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the network's initial weights
    generator = torch.Generator(device=device).manual_seed(args.seed)  # everything else random

    net = PolicyValueNet().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    selfplay = SelfPlay(args.games, device)
    replay = Replay(args.replay)

    for iteration in range(args.iterations):
        net.eval()
        replay.add(*selfplay.play(net, args.moves, args.simulations, generator))
        net.train()
        losses = [train_step(net, optimizer, *replay.sample(args.batch_size, generator))
                  for _ in range(args.updates)] if len(replay) else [(float("nan"), float("nan"))]
        policy_loss = sum(p for p, _ in losses) / len(losses)
        value_loss = sum(v for _, v in losses) / len(losses)
        print(f"iteration {iteration + 1}/{args.iterations}: {selfplay.games_finished} games finished, "
              f"replay {len(replay)}, policy loss {policy_loss:.3f}, value loss {value_loss:.3f}, "
              f"{time.perf_counter() - start:.1f}s", flush=True)
    train_seconds = time.perf_counter() - start

    net.eval()
    rates = evaluate(net, args.eval_games, args.simulations, generator, device)
    network = evaluate(net, args.eval_games, args.simulations, generator, device, use_search=False)
    result = {**rates, "network": network, "iterations": args.iterations, "games": args.games,
              "simulations": args.simulations, "eval_games": args.eval_games, "seed": args.seed, "device": str(device),
              "self_play_games": selfplay.games_finished, "train_seconds": round(train_seconds, 2),
              "seconds": round(time.perf_counter() - start, 2)}
    print(f"vs uniformly random player over {args.eval_games} games: win {rates['win']:.3f}, "
          f"draw {rates['draw']:.3f}, loss {rates['loss']:.3f} "
          f"(moving first: win {rates['first']['win']:.3f} loss {rates['first']['loss']:.3f}; "
          f"second: win {rates['second']['win']:.3f} loss {rates['second']['loss']:.3f}); the network alone "
          f"(its most probable legal move, no search): win {network['win']:.3f}, draw {network['draw']:.3f}, "
          f"loss {network['loss']:.3f}")
    print(json.dumps(result), flush=True)  # the machine-readable last line
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
