"""Population tests run torch on one thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # the CPU runners are shared: two OpenMP threads on a loaded 2-core box make the (larger)
    # population kernels crawl; results do not depend on it
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
