"""Test-session set-up shared by every file."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, in this process and in the stage
    # processes its tests start, instead of two each fighting over the cores (OpenMP threads that spin
    # while waiting make an oversubscribed run several times slower).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
