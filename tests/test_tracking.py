import time
import types
from pathlib import Path

import pytest
from pipeline_utils import free_port

from mnistgan import descriptions, sync, tracking


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


def test_reopening_a_run_absent_from_the_store_warns_in_one_line(tmp_path, monkeypatch, capsys):
    # metrics/train.json is committed: its run id may come from another clone's store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    present = tracking.open_run("t", required=True)
    present.end()
    capsys.readouterr()  # MLflow's own lines while it creates the store
    cfg = types.SimpleNamespace(experiment="t", required=True)
    run = tracking.reopen_run(cfg, "0123456789abcdef0123456789abcdef")
    assert type(run) is tracking.NullRun
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"warning: run 0123456789abcdef0123456789abcdef (the training run) is not in "
        f"sqlite:///{tmp_path}/mlflow.db; this stage is not tracked"
    ]
    again = tracking.reopen_run(cfg, present.run_id)  # a run the store holds is reopened
    assert type(again) is tracking.Run and again.run_id == present.run_id
    again.end()


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
    assert "scores logged" in sync.sync_scores()
    metrics = mlflow.get_run(run.run_id).data.metrics
    assert metrics["generated.fid"] == 46.5 and metrics["real_reference.fid"] == 5.5
    assert metrics["classifier.test_accuracy"] == 0.99
    assert "has its scores" in sync.sync_scores()  # the second time there is nothing to add
    (tmp_path / "metrics/train.json").write_text(json.dumps({"mlflow_run_id": "0" * 32}))
    assert "is not in" in sync.sync_scores()  # a run of another machine's store: left alone


# ---- the generator as a registered MLflow Model ------------------------------------------------------

# Run in a fresh interpreter: the package's source folder is taken off sys.path (with the editable
# install's finder), so the model can only load through the code MLflow stored beside the weights.
LOAD_WITHOUT_REPO = """
import importlib.util, json, sys
src = sys.argv[1]
sys.path[:] = [p for p in sys.path if p.rstrip('/') != src and p not in ('', '.')]
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]
assert importlib.util.find_spec('mnistgan') is None, 'mnistgan still importable'
import mlflow, numpy as np, pandas as pd
model = mlflow.pyfunc.load_model('models:/mnistgan-generator/latest')
out = model.predict(pd.DataFrame({'digit': [7, 7, 7, -1], 'seed': [0, 1, 2, 3]}))
np.save(sys.argv[2], out)
print(json.dumps({'module': sys.modules['mnistgan'].__file__, 'dtype': str(out.dtype), 'shape': list(out.shape)}))
"""


def test_generator_is_logged_registered_described_and_loads_without_the_repo(tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    import numpy as np
    from mlflow import MlflowClient
    from pipeline_utils import ROOT
    from test_generate import make_generator

    from mnistgan.config import Params
    from mnistgan.gan.sample import digits_from_seeds

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    g, cfg = make_generator(tmp_path / "generator.pt")
    run = tracking.open_run("mnistgan", required=True)
    run.describe(changed=descriptions.params_changes(Params(), cwd=tmp_path))  # not a git repo: says so
    run.log_generator_model(tmp_path / "generator.pt")
    scores = {
        "generated": {
            "fid": 27.8,
            "inception_score": 9.51,
            "precision": 0.672,
            "recall": 0.67,
            "classes_covered": 10,
            "n_samples": 10000,
        },
        "real_reference": {"fid": 5.56, "inception_score": 9.68},
    }
    run.describe(scores=scores)
    run.end()

    client = MlflowClient(uri)
    (version,) = client.search_model_versions(f"name='{descriptions.REGISTERED_MODEL}'")
    assert version.run_id == run.run_id and version.tags["fid"] == "27.8" and version.tags["fid_real"] == "5.56"
    assert version.tags["fid_multiple_of_real"] == "5" and version.tags["classes_covered"] == "10"
    assert client.get_registered_model(descriptions.REGISTERED_MODEL).description.startswith("GAN generators")
    note = client.get_run(run.run_id).data.tags[descriptions.NOTE_TAG]
    assert "no committed version" in note and "FID 27.80 (5.0x real 5.56)" in note and "10 of 10 digits" in note
    (logged,) = client.search_logged_models(experiment_ids=[client.get_run(run.run_id).info.experiment_id])
    assert logged.source_run_id == run.run_id and logged.name == "generator"

    p = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_REPO, str(ROOT / "src"), str(tmp_path / "out.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert str(tmp_path / "mlartifacts") in info["module"]  # the stored copy of the code, not the repo's
    assert info["dtype"] == "uint8" and info["shape"] == [4, 28, 28]
    expected = digits_from_seeds(g, cfg.z_dim, True, np.array([7, 7, 7, -1]), np.arange(4))
    assert np.load(tmp_path / "out.npy").tobytes() == expected.tobytes()  # the same bytes as `mnistgan generate`


def test_params_changes_names_what_differs_from_the_commit(tmp_path):
    import subprocess

    import yaml
    from pipeline_utils import ROOT, env

    from mnistgan.config import load_params, params_from_dict

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for cmd in (["git", "init", "-q"], ["git", "add", "params.yaml"], ["git", "commit", "-q", "-m", "p"]):
        subprocess.run(cmd, cwd=tmp_path, env=env(), check=True)
    assert descriptions.params_changes(load_params(tmp_path / "params.yaml"), cwd=tmp_path) == (
        "the commit's params.yaml, unchanged"
    )
    raw["train"]["lr"], raw["seed"], raw["tracking"]["required"] = 0.0002, 3, False
    assert descriptions.params_changes(params_from_dict(raw), cwd=tmp_path) == "changed seed=3, train.lr=0.0002"


def test_generate_from_a_model_uri_takes_the_weights_and_runs_no_stored_code(tmp_path, monkeypatch, capsys):
    import numpy as np
    from test_generate import make_generator

    from mnistgan.gan import generate
    from mnistgan.gan.sample import digits_from_seeds

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    g, cfg = make_generator(tmp_path / "generator.pt")
    run = tracking.open_run("mnistgan", required=True)
    run.log_generator_model(tmp_path / "generator.pt")
    run.end()
    # Someone with write access to the store changes the model's code file: loading it would run this.
    marker = tmp_path / "stored-code-ran"
    codes = list((tmp_path / "mlartifacts").rglob("pyfunc_generator.py"))  # the model file, and in code_paths
    assert codes
    for code in codes:
        code.write_text(f"open({str(marker)!r}, 'w').close()\n" + code.read_text())

    out = tmp_path / "sevens.npy"
    uri = f"models:/{descriptions.REGISTERED_MODEL}/latest"
    assert generate.main(["--model-uri", uri, "--digit", "7", "--n", "3", "--seed", "5", "--out", str(out)]) == 0
    expected = digits_from_seeds(g, cfg.z_dim, True, np.array([7, 7, 7]), np.arange(5, 8))
    assert np.load(out).tobytes() == expected.tobytes()
    assert not marker.exists()
    capsys.readouterr()
    assert generate.main(["--model-uri", "models:/no-such-model/1", "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--model-uri models:/no-such-model/1: cannot load" in line
