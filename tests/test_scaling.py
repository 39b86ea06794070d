"""Scaling out: DVC remote storage round-tripped through a fresh clone (the tracking server: test_server.py)."""

from __future__ import annotations

import pytest
from pipeline_utils import dvc, run
from test_determinism import copy_reproduced

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    # A copy of the shared tiny run (tests/test_determinism.py). Logging to a tracking server is tested
    # against the PostgreSQL-backed `make server` in tests/test_server.py.
    root, _ = copy_reproduced(tmp_path_factory, tmp_path_factory.mktemp("scaling") / "repo")
    return root


def test_remote_storage_push_clone_pull_reruns_nothing(repo, tmp_path):
    remote = tmp_path / "dvc-remote"
    dvc(["remote", "add", "-d", "storage", str(remote)], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "pipeline results and remote"], repo)
    dvc(["push"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc(["pull"], clone)
    for f in ("models/generator.pt", "models/classifier.pt", "data/samples.npy", "data/mnist/x_train.npy"):
        assert (clone / f).exists(), f
    out = dvc(["repro"], clone).stdout
    assert "Running stage" not in out
    assert "up to date" in dvc(["status"], clone).stdout
