import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors run fastest on one thread (and do not stall on a busy CPU); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
