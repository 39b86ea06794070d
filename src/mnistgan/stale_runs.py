"""Runs left RUNNING by a process that was killed (SIGKILL, the OOM killer, a power cut): find and close them.

A stage that opens an MLflow run tags it with who holds it: the host, the machine's boot id, the pid and
the process's start time. A RUNNING run whose holder, on this machine, is gone (no such pid, a zombie, or
the pid now belongs to a later process) can never be ended by it, so the next stage that opens a run, or
`mnistgan tracking sync`, ends it as KILLED. Runs held on other machines, and runs without the
tags (older code), are left alone: from here there is no telling whether their process lives.

Takes an MLflow client from the caller (mnistgan.tracking is the module that imports mlflow).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

HOST_TAG = "mnistgan.host"
BOOT_TAG = "mnistgan.boot_id"
PID_TAG = "mnistgan.pid"
STARTED_TAG = "mnistgan.pid_started"  # the process's start time: a pid reused by a later process is not it
CLOSED_TAG = "mnistgan.closed_by"
STATUS = "KILLED"


def boot_id() -> str:
    """Changes on every boot (Linux), so a pid recorded before a reboot is known dead; "" elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_started(pid: int) -> str:
    """The process's start time (seconds since the epoch, 2 decimals); "" when unknown."""
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"
    except Exception:  # psutil missing, no such process, no access
        return ""


def owner_tags() -> dict[str, str]:
    """The tags that say this process holds a run."""
    pid = os.getpid()
    return {HOST_TAG: platform.node(), BOOT_TAG: boot_id(), PID_TAG: str(pid), STARTED_TAG: process_started(pid)}


def holder_is_gone(tags: dict[str, str]) -> bool:
    """True when the run's holder ran on this machine and no longer runs; False when it lives or cannot be told."""
    if tags.get(HOST_TAG) != platform.node() or not tags.get(PID_TAG, "").isdigit():
        return False
    here = boot_id()
    if here and tags.get(BOOT_TAG) and tags[BOOT_TAG] != here:
        return True  # held before this machine's last boot
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: it exists
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return True
        started = tags.get(STARTED_TAG)
        return bool(started) and abs(proc.create_time() - float(started)) > 1.0
    except ImportError:
        return False
    except Exception:  # it ended between the two looks
        return True


def close_stale_runs(client: Any, experiment_ids: list[str], status: str = STATUS) -> list[str]:
    """End every RUNNING run of `experiment_ids` whose holder is gone as `status`; the ids of those ended."""
    closed = []
    runs = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        tags = run.data.tags
        if holder_is_gone(tags):
            note = f"{platform.node()} pid {os.getpid()}: its holder, pid {tags[PID_TAG]}, was gone"
            client.set_tag(run.info.run_id, CLOSED_TAG, note)
            client.set_terminated(run.info.run_id, status)
            closed.append(run.info.run_id)
    return closed


def close_in_experiment(mlflow: Any, uri: str, experiment: str) -> str:
    """`tracking sync`'s sweep of one experiment, as one line."""
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return f"no experiment {experiment!r} in {uri}; no runs to close"
    closed = close_stale_runs(mlflow.MlflowClient(), [exp.experiment_id])
    if not closed:
        return "no run left RUNNING by a killed process"
    return f"closed {len(closed)} run(s) left RUNNING by a killed process as {STATUS}: {', '.join(closed)}"
