"""Nothing lost: recovery from kills, signals, divergence, bad params, bad files and tracking faults.

Every test here starts real processes (a stage script or DVC) in a temporary copy of this checkout on a
tiny configuration, and sends real signals. In-process resume, the table of bad params and the corrupt-file
loaders have unit tests of their own (test_loop.py, test_config.py, test_io.py).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from pipeline_utils import BIN, copy_repo, copy_tree, deep_update, dvc, env, free_port, run
from test_determinism import PARAMS, copy_reproduced, output_hashes, reproduced_repo, sha256

pytestmark = pytest.mark.slow

PYTHON = str(BIN / "python")
STEPS = PARAMS["train"]["steps"]
LOG_EVERY = PARAMS["train"]["log_every"]
TRAIN_OUTPUTS = ("models/generator.pt", "models/checkpoint.pt", "metrics/train.json", "metrics/train_losses.csv")


# ---- helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny copy of this checkout with real MNIST prepared (data/mnist), for running stages directly."""
    # No classifier here, so no FID during training (that needs one; see the test below).
    root = copy_repo(
        tmp_path_factory.mktemp("prepared") / "repo", deep_update(copy.deepcopy(PARAMS), {"train": {"fid_every": 0}})
    )
    run([PYTHON, "stages/prepare.py"], root)
    return root


def workdir(prepared: Path, dest: Path, overrides: dict | None = None, data: bool = True) -> Path:
    """A copy of `prepared` (no git, no DVC state) with params.yaml overrides; the stages need neither."""
    copy_tree(prepared, dest, {".git", ".dvc", "mlflow.db", "mlartifacts"} | (set() if data else {"data"}))
    if overrides:
        set_params(dest, overrides)
    return dest


def set_params(root: Path, overrides: dict) -> None:
    path = root / "params.yaml"
    path.write_text(
        yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), copy.deepcopy(overrides)), sort_keys=False)
    )


def stage(
    root: Path, name: str, extra_env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    e = env() | (extra_env or {})
    return run([PYTHON, f"stages/{name}.py"], root, check=False, timeout=timeout, env=e)


def start_stage(root: Path, name: str, log: Path) -> subprocess.Popen:
    """The stage in the background, in its own process group, its output in `log`."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            [PYTHON, f"stages/{name}.py"],
            cwd=root,
            env=env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint at `path`, None while there is none (it is written atomically)."""
    import torch

    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, min_step: int, log: Path, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = checkpoint_step(path)
        if step is not None and step >= min_step:
            return step
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before a checkpoint\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step >= {min_step} after {timeout} s\n{log.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def mlflow_runs(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow, mlflow.search_runs(experiment_names=["mnistgan"], output_format="pandas")


def train_json(root: Path) -> dict:
    return json.loads((root / "metrics/train.json").read_text())


def error_line(p: subprocess.CompletedProcess) -> str:
    """The stage's stderr, which must be exactly one line."""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{p.stderr[-3000:]}"
    return lines[0]


# ---- a checkpoint made with other params --------------------------------------------------------------


def test_checkpoint_with_other_params_is_not_resumed(prepared, tmp_path):
    root = workdir(prepared, tmp_path / "w", {"train": {"steps": 20, "checkpoint_every": 10}})
    first = stage(root, "train")
    assert first.returncode == 0, first.stderr[-3000:]
    first_run = train_json(root)["mlflow_run_id"]

    set_params(root, {"train": {"lr": 0.0005}})
    other = stage(root, "train")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "models/checkpoint.pt was made with other params (lr 0.0004 -> 0.0005); starting fresh" in other.stderr
    assert "resuming" not in other.stderr
    # A fresh start: all 20 steps trained again (resuming the finished step-20 checkpoint would train none
    # and report 0 images/s), a new MLflow run rather than the old one continued, the checkpoint replaced.
    assert train_json(root)["images_per_second"] > 0
    assert train_json(root)["mlflow_run_id"] != first_run
    mlflow, runs = mlflow_runs(root)
    assert len(runs) == 2
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(train_json(root)["mlflow_run_id"], "loss_d")]
    assert steps == [10, 20]
    import torch

    ckpt = torch.load(root / "models/checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["train_config"]["lr"] == 0.0005 and ckpt["step"] == 20


# ---- SIGINT / SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_marks_the_run_killed(prepared, tmp_path, sig):
    root = workdir(prepared, tmp_path / "w", {"train": {"steps": 2000, "checkpoint_every": 10}})
    log = tmp_path / "train.log"
    proc = start_stage(root, "train", log)
    try:
        wait_for_checkpoint(proc, root / "models/checkpoint.pt", 10, log)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        stop_group(proc)
    text = log.read_text()
    assert code == 130, text[-3000:]
    stopped = re.search(rf"train: {sig.name}: training stopped on request at step (\d+); a checkpoint was saved", text)
    assert stopped, text[-3000:]
    step = int(stopped.group(1))
    assert 10 <= step < 2000
    import torch

    ckpt = torch.load(root / "models/checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == step  # saved on the way out, at the step it stopped
    assert not (root / "models/generator.pt").exists()

    _, runs = mlflow_runs(root)
    assert len(runs) == 1
    assert runs.iloc[0]["status"] == "KILLED"
    assert runs.iloc[0]["run_id"] == ckpt["mlflow_run_id"]  # a resumed run continues this MLflow run


# ---- divergence ---------------------------------------------------------------------------------------


def test_divergence_stops_marks_the_run_failed_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    # One Adam step moves every generator weight by about lr: with lr 1e30 the generator's activations
    # overflow to inf and inf - inf gives NaN losses on the second step, whatever the data (D keeps a
    # sane lr_d so the first step's losses are finite). A checkpoint every step keeps step 1.
    root = workdir(
        prepared,
        tmp_path / "w",
        {"train": {"steps": 50, "lr": 1e30, "lr_d": 0.0002, "log_every": 1, "checkpoint_every": 1}},
    )
    p = stage(root, "train")
    assert p.returncode == 3, p.stderr[-3000:]
    msg = re.search(
        r"train: error: training diverged: (\w+) is (nan|inf|-inf) at step (\d+); "
        r"the last good checkpoint is kept in models/checkpoint.pt",
        p.stderr,
    )
    assert msg, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    step = int(msg.group(3))
    assert 2 <= step < 50
    import torch

    ckpt = torch.load(root / "models/checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == step - 1  # the last good one: every step before the divergence was finite
    assert all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in ckpt["history"])
    assert not (root / "models/generator.pt").exists()
    _, runs = mlflow_runs(root)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FAILED"


# ---- bad params at the stage level --------------------------------------------------------------------

BAD_PARAMS = [
    ("prepare", {"prepare": {"source": "kaggle"}}, "prepare.source: unknown value 'kaggle'", ["data/mnist"]),
    (
        "classifier",
        {"classifier": {"batch_size": 5000}},
        "classifier.batch_size: 5000 is larger than the training set",
        ["models/classifier.pt", "metrics/classifier.json"],
    ),
    ("train", {"train": {"stpes": 100}}, "train.stpes: unknown key", list(TRAIN_OUTPUTS)),
    ("sample", {"sample": {"n": -5}}, "sample.n: -5 is out of range", ["data/samples.npy", "plots/samples.png"]),
]


@pytest.mark.parametrize(("name", "overrides", "message", "outputs"), BAD_PARAMS, ids=[b[0] for b in BAD_PARAMS])
def test_bad_params_fail_the_stage_with_one_line_and_write_nothing(
    prepared, tmp_path, name, overrides, message, outputs
):
    root = workdir(prepared, tmp_path / "w", overrides, data=False)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    p = stage(root, name)
    assert p.returncode == 2, p.stderr[-3000:]
    line = error_line(p)
    assert line.startswith(f"{name}: error: {message}"), line
    for rel in outputs:
        assert not (root / rel).exists(), rel
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before  # no files at all, no temps


# ---- bad params through dvc repro: nothing on disk changes ---------------------------------------------

BAD_VALUES = [
    ({"prepare": {"source": "kaggle"}}, "prepare.source: unknown value 'kaggle'"),
    ({"classifier": {"epochs": 0}}, "classifier.epochs: 0 is out of range"),
    ({"extractor": {"arch": "vit"}}, "extractor.arch: unknown value 'vit'"),
    ({"train": {"lr": -1}}, "train.lr: -1.0 is out of range"),
    ({"sample": {"batch_size": 0}}, "sample.batch_size: 0 is out of range"),
    ({"evaluate": {"splits": "ten"}}, "evaluate.splits"),
    ({"tracking": {"required": "maybe"}}, "tracking.required"),
    ({"seed": -3}, "seed: -3 is out of range"),
]


@pytest.fixture(scope="module")
def reproduced_copy(tmp_path_factory) -> Path:
    """One private copy of the shared tiny run for the bad-value tests: each puts params.yaml back after."""
    return copy_reproduced(tmp_path_factory, tmp_path_factory.mktemp("bad-values") / "repo")[0]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[next(iter(b[0])) for b in BAD_VALUES])
def test_a_bad_value_in_params_leaves_every_output_byte_identical(reproduced_copy, overrides, message):
    # DVC clears a stage's outputs before running it; the check stage runs first and stops the run.
    root = reproduced_copy
    params = (root / "params.yaml").read_text()
    before = output_hashes(root)
    assert "data/params.ok" in before
    set_params(root, overrides)
    try:
        p = dvc(["repro"], root, check=False)
    finally:
        (root / "params.yaml").write_text(params)
    assert p.returncode != 0
    assert f"check: error: {message}" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    assert "Running stage 'prepare'" not in p.stdout
    assert output_hashes(root) == before  # every file under data/, models/, metrics/, plots/


def test_fid_during_training_without_a_classifier_fails_at_once(prepared, tmp_path):
    root = workdir(prepared, tmp_path / "w", {"train": {"fid_every": 60}})
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    p = stage(root, "train")
    assert p.returncode == 2, p.stderr[-3000:]
    assert error_line(p) == (
        "train: error: models/classifier.pt: file not found; rerun the classifier stage (dvc repro classifier)"
    )
    after = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    assert [f for f in after if f not in before and not f.startswith("mlflow")] == []


# ---- bad files ----------------------------------------------------------------------------------------


def _truncated_torch_file(path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        torch.save({"state_dict": {"w": torch.ones(1000)}}, f)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncated_npy(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


BAD_FILES = [
    ("train", "data/mnist/x_train.npy", _truncated_npy, "corrupt or truncated array file"),
    ("evaluate", "models/classifier.pt", _truncated_torch_file, "corrupt or unreadable torch file"),
    ("sample", "models/generator.pt", _truncated_torch_file, "corrupt or unreadable torch file"),
]


@pytest.mark.parametrize(("name", "rel", "damage", "problem"), BAD_FILES, ids=[b[1] for b in BAD_FILES])
def test_corrupt_input_file_gives_one_clear_line(prepared, tmp_path, name, rel, damage, problem):
    root = workdir(prepared, tmp_path / "w")
    damage(root / rel)
    p = stage(root, name)
    assert p.returncode == 2, p.stderr[-3000:]
    line = error_line(p)
    assert line.startswith(f"{name}: error: {rel}: {problem}"), line


def test_corrupt_checkpoint_means_a_fresh_start(prepared, tmp_path):
    root = workdir(prepared, tmp_path / "w", {"train": {"steps": 10, "checkpoint_every": 10, "log_every": 5}})
    (root / "models").mkdir()
    (root / "models/checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip file")
    p = stage(root, "train")
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"train: models/checkpoint.pt: corrupt or unreadable torch file \(.*\); starting fresh", p.stderr)
    assert "Traceback" not in p.stderr
    assert (root / "models/generator.pt").exists() and checkpoint_step(root / "models/checkpoint.pt") == 10


# ---- tracking faults ----------------------------------------------------------------------------------


def test_unreachable_tracking_server_stops_the_stage_within_10_s(prepared, tmp_path):
    root = workdir(prepared, tmp_path / "w")
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    p = stage(root, "train", {"MLFLOW_TRACKING_URI": uri})
    seconds = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-3000:]
    line = error_line(p)
    assert line.startswith(f"train: error: tracking server {uri} is unreachable"), line
    assert seconds < 10, f"took {seconds:.1f} s (process start included)"
    for rel in TRAIN_OUTPUTS:
        assert not (root / rel).exists(), rel


def test_tracking_not_required_warns_and_the_outputs_complete(prepared, tmp_path):
    root = workdir(
        prepared,
        tmp_path / "w",
        {
            "train": {"steps": 10, "checkpoint_every": 10, "log_every": 5},
            "sample": {"n": 100, "batch_size": 100},
            "tracking": {"required": False},
        },
    )
    uri = f"http://127.0.0.1:{free_port()}"
    p = stage(root, "train", {"MLFLOW_TRACKING_URI": uri})
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"warning: tracking store {uri} unreachable; this run is not tracked" in p.stderr
    for rel in TRAIN_OUTPUTS:
        assert (root / rel).exists(), rel
    assert train_json(root)["mlflow_run_id"] == ""
    s = stage(root, "sample", {"MLFLOW_TRACKING_URI": uri})  # the untracked run id: sample logs nothing
    assert s.returncode == 0, s.stderr[-3000:]
    assert (root / "data/samples.npy").exists() and (root / "plots/samples.png").exists()


# The SIGKILL and queued-sweep tests build on test_determinism's shared run (reproduced_repo). They come
# last, so that with two pytest-xdist workers the other one has usually made it by the time this one asks.


# ---- exact resume after SIGKILL -----------------------------------------------------------------------


def test_sigkill_mid_training_then_dvc_repro_resumes_to_identical_bytes(tmp_path, tmp_path_factory):
    _, ref_hashes = reproduced_repo(tmp_path_factory)  # an uninterrupted run of the same params
    root = copy_repo(tmp_path / "repo", PARAMS)
    log = tmp_path / "killed.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [str(BIN / "dvc"), "repro", "train"],
            cwd=root,
            env=env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        killed_at = wait_for_checkpoint(proc, root / "models/checkpoint.pt", 1, log)
        os.killpg(proc.pid, signal.SIGKILL)  # dvc, the shell and the stage: a power cut or the OOM killer
        proc.wait()  # reaped, so DVC sees the pid in its stale lock is gone
    finally:
        stop_group(proc)
    assert killed_at < STEPS, "training finished before the kill; nothing was tested"
    assert not (root / "models/generator.pt").exists()

    # DVC notices the dead pid in .dvc/tmp/rwlock, removes the stale entry (a warning) and reruns train.
    out = dvc(["repro", "train"], root)
    text = out.stdout + out.stderr
    resumed = re.search(r"resuming from models/checkpoint.pt at step (\d+)", text)
    assert resumed, text[-3000:]
    assert killed_at <= int(resumed.group(1)) < STEPS  # a later checkpoint may land before the kill arrives

    for rel in ("models/generator.pt", "metrics/train_losses.csv"):
        assert sha256(root / rel) == ref_hashes[rel], f"{rel} differs from the uninterrupted run's"

    # The resumed run continued the killed run's MLflow run: one run, finished, every loss row logged.
    mlflow, runs = mlflow_runs(root)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    steps = {m.step for m in mlflow.MlflowClient().get_metric_history(runs.iloc[0]["run_id"], "loss_d")}
    assert steps == set(range(LOG_EVERY, STEPS + 1, LOG_EVERY))


# ---- two experiments at the same time -----------------------------------------------------------------

_OPEN_RUN = """
import pathlib, sys, time
from mnistgan import tracking
import mlflow  # the slow imports before the start line
pathlib.Path(sys.argv[1] + ".ready").touch()
while not pathlib.Path("go").exists():
    time.sleep(0.01)
run = tracking.open_run("mnistgan", True)
run.log_params({"i": sys.argv[1]})
run.log_metrics({"x": 1.0}, step=1)
run.end()
"""


def test_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path):
    # MLflow creates and migrates the tables when a process first opens a store; without the lock in
    # tracking.open_run, all but one of these fail with "duplicate column name: step".
    from pipeline_utils import ROOT

    e = env() | {"PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen([PYTHON, "-c", _OPEN_RUN, str(i)], cwd=tmp_path, env=e, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{i}.ready").exists() for i in range(3)) and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "go").touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(err[-2000:] for err in errors)
    _, runs = mlflow_runs(tmp_path)
    assert sorted(runs["params.i"]) == ["0", "1", "2"] and set(runs["status"]) == {"FINISHED"}


def test_a_queued_sweep_runs_two_at_a_time_and_every_experiment_logs_a_complete_run(tmp_path, tmp_path_factory):
    # A copy of the reproduced repo (prepare and classifier done, in the DVC cache) with an empty store.
    root, _ = copy_reproduced(tmp_path_factory, tmp_path / "repo")
    overrides = ["-S", "train.steps=40", "-S", "sample.n=300", "-S", "evaluate.n_reference=300"]
    losses = ["ns", "hinge"]
    # README's sweep: one command queues one experiment per value.
    dvc(["exp", "run", "--queue", "-S", f"train.loss={','.join(losses)}", *overrides], root)
    try:
        dvc(["queue", "start", "-j", "2"], root)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            status = dvc(["queue", "status"], root).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            time.sleep(10)  # each `dvc queue status` costs a second or two of CPU
        else:
            raise AssertionError(f"queue still busy after 900 s:\n{status}")
    finally:
        dvc(["queue", "stop", "--kill"], root, check=False)
    names = re.findall(r"^[0-9a-f]{7}\s+(\S+)\s", status, re.M)  # Task, Name, Created, Status
    logs = {name: dvc(["queue", "logs", name], root, check=False).stdout for name in names}
    failed = status + "\n".join(log[-3000:] for log in logs.values())
    assert len(names) == len(losses) and status.count("Success") == len(losses), failed
    assert not any("database is locked" in log for log in logs.values())

    mlflow, runs = mlflow_runs(root)  # the original repo's store, not the queue's temporary copies
    client = mlflow.MlflowClient()
    assert sorted(runs["params.train.loss"]) == sorted(losses)
    assert set(runs["tags.dvc_exp_name"]) == set(names)
    spans = sorted(zip(runs["start_time"], runs["end_time"], strict=True))
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), "no two runs overlapped (-j 2)"
    for _, r in runs.iterrows():
        name = r["tags.dvc_exp_name"]
        assert r["status"] == "FINISHED", name
        assert r["params.train.steps"] == "40", name
        steps = [m.step for m in client.get_metric_history(r["run_id"], "loss_d")]
        assert steps == list(range(LOG_EVERY, 41, LOG_EVERY)), (name, steps)
        for key in ("generated.fid", "generated.inception_score", "real_reference.fid", "classifier.test_accuracy"):
            assert math.isfinite(r[f"metrics.{key}"]), (name, key)
