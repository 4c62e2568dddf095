import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores in CI; fixed thread count keeps floating-point reductions reproducible within a test.
    torch.set_num_threads(2)
    yield
