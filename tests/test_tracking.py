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
