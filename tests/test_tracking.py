import time
from pathlib import Path

import pytest
from pipeline_utils import free_port

from mnistgan import tracking


def test_repo_root_traces_queued_experiment_copies_back(tmp_path):
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub"
    copy.mkdir(parents=True)
    assert tracking.repo_root(copy) == tmp_path / "repo"
    assert tracking.repo_root(tmp_path) == tmp_path.resolve()


def test_default_uri_is_absolute_sqlite_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and Path(uri[len("sqlite:///") :]).is_absolute()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.tracking_uri(tmp_path) == "http://example.invalid:5000"


def test_unreachable_server_is_detected_fast():
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.check_store(f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - t0 < 10


def test_unwritable_sqlite_folder_is_detected(tmp_path):
    with pytest.raises(tracking.TrackingError, match="does not exist"):
        tracking.check_store(f"sqlite:///{tmp_path}/missing/mlflow.db")


def test_not_required_and_unreachable_gives_null_run(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    run = tracking.open_run("x", required=False)
    assert isinstance(run, tracking.NullRun) and not isinstance(run, tracking.Run)
    assert "not tracked" in capsys.readouterr().err
    with pytest.raises(tracking.TrackingError):
        tracking.open_run("x", required=True)


def test_retry_only_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.with_retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        tracking.with_retry(lambda: (_ for _ in ()).throw(ValueError("bad value")))


def test_real_run_logs_to_sqlite(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    run = tracking.open_run("t", required=True)
    run.log_params({"train.lr": 0.1})
    run.log_metrics({"loss_d": 1.5}, step=3)
    run.end()
    import mlflow

    df = mlflow.search_runs(experiment_names=["t"])
    assert df.iloc[0]["params.train.lr"] == "0.1" and df.iloc[0]["metrics.loss_d"] == 1.5
    exp = mlflow.get_experiment_by_name("t")
    assert exp.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_experiment_is_model_training_runs_are_named_and_mnist_is_the_dataset(tmp_path, monkeypatch):
    import mlflow
    import numpy as np

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("DVC_EXP_NAME", "brave-ibis")
    monkeypatch.chdir(tmp_path)
    run = tracking.open_run("kind", required=True)
    x, y = np.zeros((5, 28, 28), np.uint8), np.arange(5, dtype=np.uint8)
    run.log_dataset("mnist", x, y, source=str(tmp_path / "data/mnist"), digest="0123abcd", context="training")
    run.end()
    exp = mlflow.get_experiment_by_name("kind")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    got = mlflow.get_run(run.run_id)
    assert got.info.run_name == "brave-ibis"
    (inp,) = got.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("mnist", "0123abcd")
    assert [t.value for t in inp.tags if t.key == "mlflow.data.context"] == ["training"]


def test_sync_gives_a_run_without_scores_those_of_eval_json_once(tmp_path, monkeypatch):
    import json

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: s\n")
    run = tracking.open_run("s", required=True)
    run.end()
    (tmp_path / "metrics/train.json").write_text(json.dumps({"mlflow_run_id": run.run_id}))
    (tmp_path / "metrics/classifier.json").write_text(json.dumps({"test_accuracy": 0.99}))
    scores = {"generated": {"fid": 46.5, "classes_covered": 10}, "real_reference": {"fid": 5.5}}
    (tmp_path / "metrics/eval.json").write_text(json.dumps(scores))
    assert "scores logged" in tracking.sync_scores()
    metrics = mlflow.get_run(run.run_id).data.metrics
    assert metrics["generated.fid"] == 46.5 and metrics["real_reference.fid"] == 5.5
    assert metrics["classifier.test_accuracy"] == 0.99
    assert "has its scores" in tracking.sync_scores()  # the second time there is nothing to add
    (tmp_path / "metrics/train.json").write_text(json.dumps({"mlflow_run_id": "0" * 32}))
    assert "is not in" in tracking.sync_scores()  # a run of another machine's store: left alone
