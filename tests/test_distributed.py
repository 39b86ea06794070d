"""Data-parallel training: train.nproc=2 runs the train stage under torchrun (gloo on CPU)."""

import csv

import numpy as np
import pytest
from pipeline_utils import TINY, copy_repo, deep_update, dvc

pytestmark = pytest.mark.slow

DDP = deep_update(
    {k: dict(v) for k, v in TINY.items()}, {"train": {"steps": 40, "nproc": 2, "log_every": 10, "checkpoint_every": 20}}
)


def losses(root):
    rows = list(csv.DictReader((root / "metrics/train_losses.csv").read_text().splitlines()))
    return np.array([[float(r["loss_d"]), float(r["loss_g"])] for r in rows])


def test_two_gloo_processes_match_one_process(tmp_path):
    import mlflow

    root = copy_repo(tmp_path / "repo", DDP)
    out = dvc(["repro", "train"], root).stdout
    assert "40 steps on cpu" in out
    two = losses(root)
    assert (root / "models/generator.pt").exists() and (root / "models/checkpoint.pt").exists()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mnistgan"])
    assert len(runs) == 1 and runs.iloc[0]["tags.nproc"] == "2"  # one run, logged by rank 0 only

    dvc(["exp", "run", "train", "-S", "train.nproc=1"], root)
    one = losses(root)
    assert one.shape == two.shape == (4, 2)
    # Same global batch, same data order, different noise streams: the curves follow each other.
    for col in range(2):
        assert np.corrcoef(one[:, col], two[:, col])[0, 1] > 0.8
    assert np.abs(np.log(one[-1] / two[-1])).max() < 1.0  # final losses within a factor e
