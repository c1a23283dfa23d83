"""``python launch_dying.py --rank R --step K [--in-backward] -- ARGS``: the ``egnn`` command ``ARGS`` (an
``egnn fit --procs N``) whose worker processes run ``die_on_rank.py``: the worker of rank ``R`` sends itself
``SIGKILL`` at its ``K``-th training step, while the launcher is the real one."""

from __future__ import annotations

import sys

from egnn.experiments.training import launch


def main() -> int:
    split = sys.argv.index("--")
    prefix, rest = sys.argv[1:split], sys.argv[split + 1:]
    original = launch.run_workers

    def run_dying(argv: list[str], plan: launch.WorkerPlan, module: str = "") -> int:
        return original([*prefix, "--", *argv], plan, module="tests.experiments.die_on_rank")

    launch.run_workers = run_dying
    from egnn.experiments.cli import main as cli

    return cli(rest)


if __name__ == "__main__":
    sys.exit(main())
