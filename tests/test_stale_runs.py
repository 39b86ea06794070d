"""Runs left RUNNING by a killed process: known dead by their holder's tags, closed as KILLED by the next run."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from pipeline_utils import ROOT, env

from mnistgan import stale_runs


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_holder_tags_tell_a_live_process_from_a_gone_one():
    mine = stale_runs.owner_tags()
    assert mine[stale_runs.PID_TAG] == str(os.getpid()) and mine[stale_runs.HOST_TAG] == platform.node()
    assert not stale_runs.holder_is_gone(mine)
    assert stale_runs.holder_is_gone(mine | {stale_runs.PID_TAG: str(dead_pid())})
    started = float(mine[stale_runs.STARTED_TAG])
    assert stale_runs.holder_is_gone(mine | {stale_runs.STARTED_TAG: f"{started - 100:.2f}"})  # the pid reused
    if mine[stale_runs.BOOT_TAG]:
        assert stale_runs.holder_is_gone(mine | {stale_runs.BOOT_TAG: "an-earlier-boot"})
    # another machine's run, or one without the tags: no telling, left alone
    assert not stale_runs.holder_is_gone(mine | {stale_runs.HOST_TAG: "elsewhere", stale_runs.PID_TAG: "1"})
    assert not stale_runs.holder_is_gone({})


def test_a_zombie_holder_is_gone():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(1)  # exited, not reaped: a zombie until wait()
    try:
        tags = stale_runs.owner_tags() | {stale_runs.PID_TAG: str(p.pid), stale_runs.STARTED_TAG: ""}
        assert stale_runs.holder_is_gone(tags)
    finally:
        p.wait()


class FakeClient:
    def __init__(self, runs: dict[str, dict[str, str]]):
        self.runs, self.ended, self.tags = runs, {}, {}

    def search_runs(self, experiment_ids, filter_string, max_results):
        assert filter_string == "attributes.status = 'RUNNING'"
        return [
            SimpleNamespace(info=SimpleNamespace(run_id=i), data=SimpleNamespace(tags=t)) for i, t in self.runs.items()
        ]

    def set_tag(self, run_id, key, value):
        self.tags[run_id] = (key, value)

    def set_terminated(self, run_id, status):
        self.ended[run_id] = status


def test_close_stale_runs_ends_only_runs_of_gone_holders():
    mine = stale_runs.owner_tags()
    client = FakeClient(
        {
            "alive": mine,
            "killed": mine | {stale_runs.PID_TAG: str(dead_pid())},
            "elsewhere": mine | {stale_runs.HOST_TAG: "other-host"},
            "old": {},
        }
    )
    assert stale_runs.close_stale_runs(client, ["1"]) == ["killed"]
    assert client.ended == {"killed": "KILLED"} and "was gone" in client.tags["killed"][1]


HOLD = """
import os, sys, time
from mnistgan import tracking
run = tracking.open_run("mnistgan", True)
print(run.run_id, flush=True)
time.sleep(600)
"""


def test_a_sigkilled_run_is_closed_by_the_next_run_opened(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    e = env() | {"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=tmp_path, env=e, stdout=subprocess.PIPE, text=True)
    try:
        killed = holder.stdout.readline().strip()
        assert killed, "the holder opened no run"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_run(killed).info.status == "RUNNING"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from mnistgan import tracking

    run = tracking.open_run("mnistgan", True)
    run.end()
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert client.get_run(run.run_id).data.tags[stale_runs.PID_TAG] == str(os.getpid())
    mlflow.set_tracking_uri("")  # leave no store set for the next test in this process


def test_sync_closes_runs_of_killed_processes(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("mnistgan")
    run = client.create_run(exp, tags=stale_runs.owner_tags() | {stale_runs.PID_TAG: str(dead_pid())})
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    p = subprocess.run(
        [sys.executable, "-m", "mnistgan.sync", "sync"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env() | {"MLFLOW_TRACKING_URI": uri},
        timeout=120,
    )
    # (then sync's second step fails here: this folder has no pipeline outputs)
    assert f"tracking: closed 1 run(s) left RUNNING by a killed process as KILLED: {run.info.run_id}" in p.stdout
    assert client.get_run(run.info.run_id).info.status == "KILLED"
