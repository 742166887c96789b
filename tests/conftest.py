"""Suite-wide settings: one torch thread (tiny models run faster without OpenMP hand-offs, and
results do not depend on the machine's core count)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The pipeline sets ``run.num_threads`` (default 2) for the whole process; put 1 back after
    each test, so that a later test does not run oversubscribed on a busy machine."""
    yield
    torch.set_num_threads(1)
