"""``python -m ezm_gpu.kernels``: run batched searches with a small random world model.

Runs ``sampled_gumbel_search`` for ``--trees`` trees on the chosen device (Triton kernels on CUDA, the
torch reference on CPU; ``--backend triton`` on CPU runs the interpreter under TRITON_INTERPRET=1), prints
tree-simulations per second and, when the kernels ran, checks them against the torch reference with
``kernels.agreement``'s rule: integer outputs identical except after a float32 near-tie, and the floats of
identically searched trees within the spec's tolerance. Exit status 1 on any other difference. The pieces
(random model, inputs, timing, check) are ``kernels.random_search``'s, shared with ``ezm_gpu.selfcheck``.
"""
from __future__ import annotations

import argparse

import torch

from . import SearchConfig, sampled_gumbel_search
from .random_search import RandomModel, check_against_reference, random_inputs, timed_search
from .search import resolve_backend


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ezm_gpu.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=_positive, default=4096, help="B, trees searched at once")
    parser.add_argument("--simulations", type=_positive, default=32, help="N, simulations per search")
    parser.add_argument("--root-actions", type=_positive, default=16, help="K, sampled root candidates")
    parser.add_argument("--top-actions", type=_positive, default=None,
                        help="m0, root candidates considered (default: K, as EZ-M)")
    parser.add_argument("--child-actions", type=_positive, default=2, help="k, sampled actions per interior node")
    parser.add_argument("--action-dim", type=_positive, default=19, help="A, action dimensions (h1: 19)")
    parser.add_argument("--latent", type=_positive, default=64, help="D, latent size of the random model")
    parser.add_argument("--searches", type=_positive, default=5, help="timed searches after one warm-up")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto",
                        help="auto: Triton on CUDA, torch on CPU; triton on CPU needs TRITON_INTERPRET=1")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu or auto)")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    try:
        backend = resolve_backend(None if args.backend == "auto" else args.backend, device)
    except ValueError as error:
        parser.error(f"--backend {args.backend}: {error}")

    top_actions = args.root_actions if args.top_actions is None else args.top_actions
    config = SearchConfig(num_simulations=args.simulations, num_top_actions=top_actions,
                          num_child_actions=args.child_actions)
    model = RandomModel(args.latent, args.action_dim, args.child_actions, device)
    inputs = random_inputs(args.trees, args.root_actions, args.action_dim, args.latent, device)
    out, seconds = timed_search(inputs, model, config, backend, args.searches, search=sampled_gumbel_search)
    print(f"{args.trees} trees x {args.simulations} simulations (K={args.root_actions}, k={args.child_actions}) "
          f"on {device} [{backend}]: {seconds * 1e3:.2f} ms per search, "
          f"{args.trees * args.simulations / seconds:,.0f} tree-simulations/s")
    if backend == "triton":
        verdict = check_against_reference(out, inputs, model, config)
        print(f"Triton kernels vs torch reference (actions, visit counts, survivors): {verdict.summary()}")
        if not verdict.agrees:
            raise SystemExit(1)
    counts = out.visit_counts.float()
    print(f"root value mean {out.root_value.mean():+.4f}; visits of the chosen action: mean "
          f"{counts.gather(1, out.action_index[:, None]).mean():.2f} of {args.simulations}; "
          f"survivors per tree: {int(out.considered.sum(1)[0])}")


if __name__ == "__main__":
    main()
