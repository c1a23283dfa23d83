"""``torchrun ... die_on_rank.py --rank R --step K [--in-backward] -- ARGS``: the ``egnn`` command ``ARGS`` in which
rank ``R`` sends itself ``SIGKILL`` at its ``K``-th training step (a count, not a time: the same instant on any
machine): before the step's forward, or (``--in-backward``) after its loss was reduced over the ranks, so that the
other ranks meet the loss in DDP's gradient all-reduce inside ``loss.backward()``."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from egnn.experiments.training import loop


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--in-backward", action="store_true")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if int(os.environ.get("RANK", 0)) == args.rank:
        original = loop.Trainer._loss
        count = 0

        def dying_loss(self, batch, share):
            nonlocal count
            count += 1
            if count == args.step and not args.in_backward:
                os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9`: no cleanup
            out = original(self, batch, share)
            if count == args.step:  # the others passed the loss's all-reduce too: they wait in the backward's
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        loop.Trainer._loss = dying_loss
    from egnn.experiments.cli import main as cli

    return cli(rest)


if __name__ == "__main__":
    sys.exit(main())
