"""``benchmarks/gpu_check.py --device cpu --ci``: the GPU readiness script runs end to end in its CI form."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timing
def test_gpu_check_cpu_form(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--ci",
         "--qm9-data", str(tmp_path / "no_qm9")],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout[proc.stdout.index("| check |"):]
    for check in ("equivariance", "batched == per graph", "chunked == unchunked", "dense == sparse",
                  "radius graph device == CPU", "nbody train", "layer timing"):
        assert f"| {check} | ok |" in table, table
    assert "| qm9 epoch | skipped |" in table  # no cache in the CI form; the full form needs --qm9-data
    assert "FAIL" not in table
