import pytest
import torch

# the suite's graphs are tiny: one intra-op thread is as fast as two and does not stall on a busy machine
torch.set_num_threads(1)


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param
