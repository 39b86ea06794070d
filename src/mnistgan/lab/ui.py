"""`make ui` / `mnistgan ui`: the MLflow UI on this project's runs table.

Resolves the store as the pipeline does (MLFLOW_TRACKING_URI, else `mlflow.db` at the repo root), makes sure
the experiment of params.yaml (`tracking.experiment`) exists with its kind and description tags, starts
`mlflow ui` on 127.0.0.1, waits until it answers /health and prints the address of the experiment's runs
table in MLflow's model-training view. MLflow 3.17's UI picks its view by the `workflowType` query
parameter (else the browser's last choice, GenAI by default: traces, token usage), so the address carries
`workflowType=machine_learning`. The server stays in the foreground until Ctrl-C. With
MLFLOW_TRACKING_URI naming an http(s) server, it prints that server's address and starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

from mnistgan import tracking
from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import load_params
from mnistgan.errors import UserError

PROG = "mnistgan ui"
HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_EXPERIMENT = "mnistgan"
# MLflow 3.17's UI: `workflowType` chooses the model-training view ("machine_learning") over GenAI ("genai").
VIEW_QUERY = "workflowType=machine_learning"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (default: %(default)s)")
    p.add_argument("--params", default=None, help="params file naming the experiment (default: <repo>/params.yaml)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server (default: %(default)s)")
    p.add_argument("--no-browser", action="store_true", help="print the address only, open no browser")
    return p


def runs_url(base: str, experiment_id: str) -> str:
    """The address of an experiment's runs table in the model-training view of the MLflow UI at `base`."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{VIEW_QUERY}"


def experiment_name(params: str | None) -> str:
    """params.yaml's `tracking.experiment` (the default when there is no params file at the repo root)."""
    path = Path(params) if params else tracking.repo_root() / "params.yaml"
    if params is None and not path.exists():
        return DEFAULT_EXPERIMENT
    return load_params(path).tracking.experiment


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment `name` in the store at `uri`, created (with its kind and note tags) when missing."""
    mlflow = tracking.import_mlflow(True)
    tracking.check_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with tracking.store_init_lock(uri):
            tracking.with_retry(mlflow.MlflowClient, uri)  # creates or migrates the tables
        return tracking.with_retry(tracking.experiment_id, mlflow, name, tracking.repo_root())
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"tracking store {uri}: {first}") from None


def check_port_free(
    port: int, taken: str = "another MLflow UI?", choose: str = "choose another with --port (make ui PORT=...)"
) -> None:
    """UserError naming the port when a server could not listen on HOST:port; `taken` guesses who holds it,
    `choose` says how to pick another (`make ui` and `make server` word them for their own command)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                why = f"is taken ({taken})" if e.errno == errno.EADDRINUSE else "is not allowed"
                raise UserError(f"port {port} on {HOST} {why}; {choose}") from None
            raise UserError(f"cannot use port {port} on {HOST} ({e.strerror or e})") from None


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def start_server(uri: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow ui` on HOST:port in its own session and process group, its output in `log`."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port)]
    cmd += ["--workers", "1"]  # one person's browser: one worker starts faster than the default four
    return start_mlflow_process(cmd, log, tracking.repo_root(), {}, "wb")


def start_mlflow_process(cmd: list[str], log: Path, cwd: Path, env: dict[str, str], mode: str) -> subprocess.Popen:
    """An MLflow server command (`mlflow ui`, `mlflow server`) in its own session and process group (so Ctrl-C
    reaches this process only, which then stops the server's whole group), its output in `log` (mode "wb" or
    "ab"), with `env` over this process's environment."""
    env = dict(os.environ) | env
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    # MLflow's job runner (seven huey processes of ~240 MB each) serves GenAI features only (LLM judges, trace
    # roll-ups); the runs of this project need none of it. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings it back.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log, mode) as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)  # fmt: skip


def wait_healthy(proc: subprocess.Popen, base: str, wait: float, log: Path) -> None:
    """Return once the server at `base` answers /health; UserError when it exits or `wait` seconds pass."""
    deadline = time.monotonic() + wait
    while not _healthy(base):
        if proc.poll() is not None:
            last = _last_line(log)
            raise UserError(
                f"mlflow ui exited with code {proc.returncode} before answering"
                f"{f' ({last})' if last else ''}; its log: {log}"
            )
        if time.monotonic() > deadline:
            raise UserError(f"mlflow ui did not answer on {base}/health within {wait:g} s; its log: {log}")
        time.sleep(0.25)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM to a server's process group (mlflow, uvicorn and its workers); SIGKILL after `grace` s.
    Shared by `make ui` and `make server`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is ours
            if not _group_alive(pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return alive(pgid) or any(_in_group(p, pgid) for p in os.listdir("/proc") if p.isdigit())


def _in_group(pid: str, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[2]) == pgid


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform == "darwin"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(uri: str, experiment: str, port: int, wait: float, browser: bool) -> int:
    if uri.startswith(("http://", "https://")):  # someone else's server: its address, nothing started
        print(runs_url(uri, ensure_experiment(uri, experiment)))
        return 0
    check_port_free(port)
    experiment_id = ensure_experiment(uri, experiment)
    log = Path(tempfile.gettempdir()) / f"mnistgan-ui-{port}.log"
    base = f"http://{HOST}:{port}"
    previous_int = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops the server as Ctrl-C does
    proc = None
    try:
        proc = start_server(uri, port, log)
        wait_healthy(proc, base, wait, log)
        url = runs_url(base, experiment_id)
        print(url, flush=True)
        print(f"{PROG}: experiment {experiment!r} of {uri}; server log {log}; Ctrl-C stops it", file=sys.stderr)
        if browser and has_display():
            webbrowser.open(url)
        while proc.poll() is None:
            time.sleep(0.5)
        raise UserError(f"mlflow ui stopped by itself (exit code {proc.returncode}); its log: {log}")
    except KeyboardInterrupt:
        print(f"{PROG}: stopped", file=sys.stderr)
        return 0
    finally:
        if proc is not None:
            # a second Ctrl-C must not cut the clean-up short and leave the server running
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stop_group(proc.pid, grace=10.0)
            proc.poll()  # its exit status, if stop_group did not reap it already
            signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), ui_command, argv)


def ui_command(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 1 and 65535")
    if args.wait <= 0:
        raise UserError(f"--wait {args.wait:g}: must be positive")
    return serve(tracking.tracking_uri(), experiment_name(args.params), args.port, args.wait, not args.no_browser)


if __name__ == "__main__":
    raise SystemExit(main())
