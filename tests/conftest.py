import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Test models are tiny: one thread is as fast as two, keeps floating-point reductions reproducible,
    # and avoids OpenMP spin-waiting when another process shares the two cores.
    torch.set_num_threads(1)
    yield
