"""Determinism on the CPU: the same params and code give the same bytes.

The tiny pipeline runs twice in one temporary copy of this checkout (`dvc repro`, then `dvc repro --force`)
and every output is compared byte for byte (that a second `dvc repro` reruns nothing: tests/test_pipeline.py).

The first run is shared (`reproduced_repo`): its generator is the reference an interrupted and resumed run must
match (tests/test_recovery.py), and the queued-experiments, bad-value, server, worker-clone and registry tests
start from copies of it. Tests never change the shared repo: they work in copies of it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock
from pipeline_utils import OTHER_CPU, ROOT, TINY, copy_repo, copy_tree, deep_update, dvc

from mnistgan.lab.clone import varying_outputs

pytestmark = pytest.mark.slow

# TINY with a checkpoint every 20 of the 120 steps, so test_recovery can kill training between checkpoints.
PARAMS = deep_update(copy.deepcopy(TINY), {"train": {"checkpoint_every": 20}})

# Outputs that are meant to differ between two runs of the same params, so are not compared: the ones dvc.yaml
# declares with `meta: {varies: ...}` (metrics/train.json: wall-clock seconds, images per second and the MLflow
# run id; models/checkpoint.pt: the MLflow run id, and it is deleted before the second run, see below), the
# same list `mnistgan verify` skips.
NOT_COMPARED = set(varying_outputs(ROOT))
# Must be among the compared files (the pipeline's outputs).
REQUIRED = {
    "models/generator.pt",
    "models/classifier.pt",
    "data/samples.npy",
    "metrics/eval.json",
    "metrics/classifier.json",
    "metrics/train_losses.csv",
}
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_hashes(root: Path) -> dict[str, str]:
    """sha256 of every pipeline output (all files under data/, models/, metrics/, plots/) but NOT_COMPARED."""
    out = {}
    for folder in OUTPUT_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not path.name.startswith(".") and rel not in NOT_COMPARED:
                out[rel] = sha256(path)
    return out


_SHARED: dict[str, tuple[Path, dict[str, str]]] = {}


def reproduced_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny copy of this checkout after one `dvc repro`, and the sha256 of its outputs. Read only: copy it
    (copy_reproduced) before running anything in it.

    Made once per test session: a module-level cache within a process (pytest would build a fixture
    imported into two modules twice), and a folder under the session's base temp, guarded by a file lock,
    across pytest-xdist workers (--dist loadfile may send this module and test_recovery.py to different
    workers; the second one to ask waits for the first one's run instead of repeating it).
    """
    if "repo" not in _SHARED:
        base = tmp_path_factory.getbasetemp()
        if "PYTEST_XDIST_WORKER" in os.environ:
            base = base.parent  # the session's folder, above every worker's own
        folder, hashes = base / "reproduced", base / "reproduced" / "hashes.json"
        with FileLock(str(base / "reproduced.lock")):
            if not hashes.exists():  # hashes.json is written last: a folder without it is a failed attempt
                shutil.rmtree(folder, ignore_errors=True)
                root = copy_repo(folder / "repo", PARAMS)
                dvc(["repro"], root)
                hashes.write_text(json.dumps(output_hashes(root)))
        _SHARED["repo"] = folder / "repo", json.loads(hashes.read_text())
    return _SHARED["repo"]


def copy_reproduced(tmp_path_factory: pytest.TempPathFactory, dest: Path) -> tuple[Path, dict[str, str]]:
    """A private copy of `reproduced_repo` (outputs, git, DVC cache) with an empty MLflow store and no DVC
    locks or queue state, and the hashes of the shared run's outputs."""
    base, hashes = reproduced_repo(tmp_path_factory)
    copy_tree(base, dest, {"mlflow.db", "mlflow.db-journal", "mlartifacts"})
    shutil.rmtree(dest / ".dvc/tmp", ignore_errors=True)
    return dest, hashes


def test_two_forced_runs_give_identical_bytes(tmp_path, tmp_path_factory):
    root, first = copy_reproduced(tmp_path_factory, tmp_path / "repo")
    assert set(first) >= REQUIRED, f"missing outputs: {sorted(REQUIRED - set(first))}"

    # The checkpoint is a `persist: true` output: DVC keeps it across runs so an interrupted run resumes.
    # Left in place, the forced rerun would resume from the finished step-120 checkpoint and train
    # nothing; deleting it makes the second run train from scratch, which is what is compared here.
    (root / "models/checkpoint.pt").unlink()
    out = dvc(["repro", "--force"], root)
    assert "resuming" not in out.stdout + out.stderr
    second = output_hashes(root)

    assert set(second) == set(first)
    differ = sorted(k for k in first if first[k] != second[k])
    assert not differ, f"not byte-identical between two runs of the same params: {differ}"


@pytest.mark.skipif(os.environ.get("MNISTGAN_SOAK") != "1", reason="about 4 minutes on 2 cores: `make soak` runs it")
def test_portable_numerics_keep_the_bytes_that_another_cpu_kind_moves(tmp_path, tmp_path_factory):
    """Another CPU kind, emulated by holding every library below this CPU's path: with native numerics (the
    default) the bytes move from the first trained network on; with portable ones the whole pipeline keeps them."""
    root, first = copy_reproduced(tmp_path_factory, tmp_path / "native")
    dvc(["repro", "--force", "--single-item", "classifier"], root, extra_env=OTHER_CPU)
    assert sha256(root / "models/classifier.pt") != first["models/classifier.pt"]

    portable = deep_update(copy.deepcopy(PARAMS), {"numerics": {"mode": "portable"}})
    here, other = copy_repo(tmp_path / "here", portable), copy_repo(tmp_path / "other", portable)
    dvc(["repro"], here)
    dvc(["repro"], other, extra_env=OTHER_CPU)
    assert json.loads((other / "metrics/platform.json").read_text())["aten"] == "AVX2"  # the caps were overruled
    assert output_hashes(other) == output_hashes(here)
