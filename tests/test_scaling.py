"""Scaling out: a real MLflow tracking server, and DVC remote storage round-tripped through a fresh clone."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest
from pipeline_utils import BIN, dvc, env, free_port, run
from test_determinism import copy_reproduced

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--default-artifact-root", (root / "art").as_uri()],
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, server):
    # A copy of the shared tiny run (tests/test_determinism.py), whose stages that log to MLflow (train,
    # sample, evaluate) run again here against the server.
    root, _ = copy_reproduced(tmp_path_factory, tmp_path_factory.mktemp("scaling") / "repo")
    (root / "models/checkpoint.pt").unlink()  # persisted by DVC: left in place, train would resume at its end
    dvc(["repro", "--force", "--single-item", "train", "sample", "evaluate"], root,
        extra_env={"MLFLOW_TRACKING_URI": server})  # fmt: skip
    return root


def test_pipeline_logs_to_a_remote_tracking_server(repo, server):
    import json

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("mnistgan")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.data.params["train.loss"] and "train.lr" in r.data.params
    assert len(client.get_metric_history(r.info.run_id, "loss_d")) > 3
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert r.data.metrics["generated.fid"] == pytest.approx(ev["generated"]["fid"])
    images = [a.path for a in client.list_artifacts(r.info.run_id, "images")]
    assert any(p.startswith("images/final_samples") and p.endswith(".png") for p in images)
    assert not (repo / "mlflow.db").exists()  # nothing went to the local default store


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
