import os

import pytest
import torch

# the suite's graphs are tiny: one intra-op thread is as fast as two and does not stall on a busy machine
# (OMP_NUM_THREADS, when set, wins: `make test-repeat` runs the timing tests at 1 and 2 threads)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--repeat-timing", type=int, default=1, metavar="N",
                     help="run each test marked `timing` N times (with -x: stop at the first failure)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    n = metafunc.config.getoption("--repeat-timing")
    if n > 1 and metafunc.definition.get_closest_marker("timing") is not None:
        metafunc.fixturenames.append("timing_repeat")
        metafunc.parametrize("timing_repeat", range(n), ids=lambda i: f"rep{i + 1}")
