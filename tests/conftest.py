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


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Tiny H/C/O models (random weights: the tests compare compiled with eager, not with physics), saved as
    checkpoints and compiled once per session: ``{"vector": (checkpoint, float64 .pt2 with stress),
    "invariant": (checkpoint, float32 .pt2 without stress)}``."""
    import warnings

    from egnn.atoms.model import AtomsModel, AtomsModelConfig, save_model
    from egnn.compiled.export import export_model

    out = tmp_path_factory.mktemp("exported")
    made = {}
    for name, extra, dtype, stress in [("vector", {"vector_channels": 2}, "float64", True),
                                       ("invariant", {"update_coords": True}, "float32", False)]:
        torch.manual_seed(1)
        config = AtomsModelConfig(species=[1, 6, 8], cutoff=4.0, hidden_channels=16, num_layers=2, n_rbf=4,
                                  ref_energies=[-13.6, -1030.0, -2040.0], scale=0.7, shift=0.1, forces="forces",
                                  **extra)
        ckpt = save_model(AtomsModel(config), out / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = export_model(ckpt, out / f"{name}.pt2", dtype=dtype, stress=stress)
        made[name] = (ckpt, report)
    return made
