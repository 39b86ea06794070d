"""A soak under kills: queued experiments on two queue workers while training processes and workers are SIGKILLed
at random moments; what failed is rerun until every experiment has its results. Then nothing may be lost or
left behind: every experiment's results in `dvc exp show`, no MLflow run RUNNING, `mlflow.db` intact, every
experiment's outputs checked out from an uncorrupted DVC cache, no process of the test alive.

Minutes on a 2-core CPU, so `make soak` runs it (MNISTGAN_SOAK=1; `.ci/run` after the tests), not `make test`.
MNISTGAN_SOAK_SEED repeats one sequence of kills; the figures are printed and written to reports/soak.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from pipeline_utils import BIN, ROOT, dvc, env, run
from test_determinism import copy_reproduced

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MNISTGAN_SOAK") != "1", reason="minutes long: `make soak` runs it"),
]

SEEDS = range(1, 7)  # six experiments
KILLS = 4  # at least 3: two training processes and two queue workers, in a random order
SETTINGS = [
    "-S",
    "train.steps=200",
    "-S",
    "train.checkpoint_every=50",
    "-S",
    "sample.n=300",
    "-S",
    "evaluate.n_reference=300",
]
# one thread per process: two workers, two cores (oversubscribed OpenMP threads make each run several times slower)
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ours(root: Path) -> list[psutil.Process]:
    """Every live process of this test's repo: queue workers, executors, stages (by working folder or arguments)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                continue
            if str(root) in (p.info["cwd"] or "") or str(root) in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def victims(root: Path, kind: str) -> list[psutil.Process]:
    """Training processes (stages/train.py in a queue's temporary copy) or queue workers."""
    out = []
    for p in ours(root):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if (kind == "train" and "stages/train.py" in cmd) or (kind == "worker" and "exp queue-worker" in cmd):
            out.append(p)
    return out


def busy(root: Path) -> bool:
    """Whether an experiment of this repo still runs (an executor or a stage, with or without its worker)."""
    for p in ours(root):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "exec-run" in cmd or "stages/" in cmd:
            return True
    return False


def queue_status(root: Path) -> dict[str, str]:
    out = dvc(["queue", "status"], root, check=False).stdout
    return dict(re.findall(r"^[0-9a-f]{7}\s+(\S+)\s+.*?\s(Queued|Running|Success|Failed)\s*$", out, re.M))


def collected(root: Path) -> dict[int, str]:
    """seed -> name of an experiment of that seed that DVC collected with its scores."""
    names = set(dvc(["exp", "ls", "--name-only"], root).stdout.split())
    shown = json.loads(dvc(["exp", "show", "--json", "--no-pager"], root).stdout)
    done = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            fid = (((data.get("metrics") or {}).get("metrics/eval.json") or {}).get("data") or {}).get("generated", {})
            seed = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("seed")
            if exp.get("name") in names and "fid" in fid and rev.get("name") == exp["name"]:
                done[seed] = exp["name"]
    return done


def queue(root: Path, seed: int, attempt: int) -> None:
    dvc(["exp", "run", "--queue", "-n", f"soak-{seed}-{attempt}", "-S", f"seed={seed}", *SETTINGS], root)


def start_workers(root: Path) -> None:
    # Not through run(): the workers it starts inherit its output pipes, and reading them to their end would
    # wait for the workers to exit (when the queue is empty). Their output goes to a file instead.
    with open(root.parent / "workers.log", "a") as log:
        subprocess.run(
            [str(BIN / "dvc"), "queue", "start", "-j", "2"],
            cwd=root,
            env=env() | THREADS,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=True,
        )


def drain(root: Path, timeout: float = 900) -> None:
    """Wait until nothing of this repo runs and nothing is queued; restart workers while work waits for them,
    and end tasks left 'Running' by a killed worker (`dvc queue kill`: their processes are gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = queue_status(root)
        if "Queued" in status.values() and not victims(root, "worker"):
            start_workers(root)
        elif "Queued" not in status.values() and not busy(root):
            stuck = [name for name, s in status.items() if s == "Running"]
            if stuck:
                dvc(["queue", "kill", *stuck], root, check=False)
            if not {"Queued", "Running"} & set(queue_status(root).values()):
                return
        time.sleep(5)  # each `dvc queue status` costs a second of CPU
    raise AssertionError(f"queue not drained after {timeout} s: {queue_status(root)}")


def test_queued_experiments_survive_random_kills(tmp_path, tmp_path_factory):
    t0 = time.monotonic()
    seed = int(os.environ.get("MNISTGAN_SOAK_SEED") or random.randrange(10**6))
    rng = random.Random(seed)
    root, _ = copy_reproduced(tmp_path_factory, tmp_path / "repo")
    kills: list[str] = []
    reruns = 0
    try:
        for s in SEEDS:
            queue(root, s, 0)
        start_workers(root)
        order = ["train", "train", "worker", "worker"][:KILLS]
        rng.shuffle(order)
        for kind in order:  # at random moments: a training process or a worker, whichever the order says
            time.sleep(rng.uniform(3, 12))
            deadline = time.monotonic() + 60
            while not (found := victims(root, kind)) and time.monotonic() < deadline:
                if not victims(root, "worker") and "Queued" in queue_status(root).values():
                    start_workers(root)  # both workers were killed: work waits
                time.sleep(0.5)
            if not found:
                continue
            target = rng.choice(found)
            try:
                target.send_signal(signal.SIGKILL)
                kills.append(kind)
            except psutil.NoSuchProcess:
                pass
        rounds = 0
        while True:
            drain(root)
            missing = [s for s in SEEDS if s not in collected(root)]
            if not missing:
                break
            rounds += 1
            assert rounds <= 4, f"seeds {missing} still without results after 4 reruns"
            dvc(["queue", "remove", "--failed", "--success"], root, check=False)
            for s in missing:
                queue(root, s, rounds)
                reruns += 1
            start_workers(root)
        soak_seconds = time.monotonic() - t0
        assert len(kills) >= 3, f"only {len(kills)} kills landed ({kills})"

        # every experiment: its full results in `dvc exp show`
        done = collected(root)
        assert sorted(done) == list(SEEDS), done

        # no MLflow run left RUNNING once `tracking sync` has closed what the stages did not
        sync = run([str(BIN / "python"), "-m", "mnistgan.sync", "sync"], root).stdout
        db = sqlite3.connect(root / "mlflow.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            statuses = db.execute("SELECT name, status FROM runs").fetchall()
        finally:
            db.close()
        assert not [r for r in statuses if r[1] == "RUNNING"], statuses
        finished = {name for name, status in statuses if status == "FINISHED"}
        assert set(done.values()) <= finished, (done, statuses)

        # the DVC cache: every experiment's outputs check out and match its dvc.lock
        for name in done.values():
            dvc(["exp", "apply", name], root)
            dvc(["checkout"], root)
            status = dvc(["status"], root).stdout
            assert "Data and pipelines are up to date" in status, (name, status)

        # nothing of the test left running (idle workers stop by themselves once the queue is empty)
        deadline = time.monotonic() + 60
        while (left := ours(root)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not left, [" ".join(p.cmdline()) for p in left]
    finally:
        for p in ours(root):
            with contextlib.suppress(psutil.Error):
                p.kill()
    closed = sum(1 for _, s in statuses if s == "KILLED")
    figures = {
        "experiments": len(SEEDS),
        "kills": len(kills),
        "kills_train": kills.count("train"),
        "kills_worker": kills.count("worker"),
        "reruns": reruns,
        "runs": len(statuses),
        "runs_killed": closed,
        "seconds": round(soak_seconds),
        "seed": seed,
        "sync": sync.strip(),
    }
    print(f"\nsoak: {json.dumps(figures)}")
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports/soak.json").write_text(json.dumps(figures, indent=1) + "\n")
