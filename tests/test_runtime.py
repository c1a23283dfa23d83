"""egnn.runtime.tune_cpu_allocator: accepted by glibc (Linux), a no-op elsewhere."""

import subprocess
import sys

import pytest


@pytest.mark.timing
def test_tune_cpu_allocator_applies_on_linux():
    # in a child process: the setting is process-wide
    code = "from egnn.runtime import tune_cpu_allocator; import torch; r = tune_cpu_allocator(); " \
           "x = [torch.randn(1 << 20) for _ in range(4)]; print(r)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("True" if sys.platform.startswith("linux") else "False")
