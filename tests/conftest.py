"""Test-session set-up shared by every file."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, in this process and in the stage
    # processes its tests start, instead of two each fighting over the cores (OpenMP threads that spin
    # while waiting make an oversubscribed run several times slower).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

# The longest files first, the rest after them in their usual order. `make test` hands whole files to the
# two workers (--dist loadfile) in collection order (--no-loadscope-reorder), so no long file is left
# for the end while the other worker idles. The longest tests in a `make test` on the 2-core AMD EPYC
# (2026-12-08): the worker clones on test_server's server 145 s, test_pipeline's tiny run 143 s, test_recovery's
# queued sweep 121 s, test_determinism's two forced runs 117 s. test_soak.py runs only under `make soak`.
SLOWEST_FIRST = (
    "test_recovery.py",
    "test_verify.py",
    "test_pipeline.py",
    "test_server.py",
    "test_determinism.py",
    "test_scoring.py",
    "test_distributed.py",
    "test_bench.py",
    "test_numerics.py",
    "test_data.py",
    "test_score_cli.py",
    "test_calibrate.py",
    "test_metrics.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FIRST)))  # stable: a file keeps its order
