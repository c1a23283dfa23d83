"""Worked example: fit an energy/force EGNN to a periodic Cu-Au alloy computed with ASE's EMT, then predict, relax
(BFGS) and run NVE molecular dynamics with :class:`egnn.ase.EGNNCalculator`.

Same as ``egnn example emt``; arguments are passed through, e.g.::

    python examples/emt_alloy.py --out runs/emt --minutes 6 --threads 2
"""

import sys

from egnn.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["example", "emt", *sys.argv[1:]]))
