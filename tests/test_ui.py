"""`mnistgan ui` (`make ui`): a real MLflow UI on a free port against a temporary store."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest
from pipeline_utils import env, free_port, rendered_text

from mnistgan import tracking
from mnistgan.lab import ui


def _env(uri: str) -> dict[str, str]:
    e = env() | {"MLFLOW_TRACKING_URI": uri}
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):  # no browser may open, whatever --no-browser does
        e.pop(name, None)
    return e


def _run_ui(args: list[str], uri: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnistgan.lab.ui", *args],
        cwd=cwd,
        env=_env(uri),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    """proc's first stdout line, or "" when it prints none within `timeout` seconds."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0].strip() if got else ""


# 25 to 45 s on the 2-core machine: a fresh store's tables (about 7 s), the server's start (about 6 s), two pages
# rendered in headless Chromium (about 5 s each)
@pytest.mark.slow
def test_ui_prints_the_model_training_runs_table_serves_it_and_stops_cleanly(tmp_path):
    import mlflow

    uri, port = f"sqlite:///{tmp_path}/mlflow.db", free_port()
    # Ctrl-C as from a terminal: a shell starts background jobs with SIGINT ignored, and a child inherits that
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistgan.lab.ui", "--port", str(port), "--no-browser", "--wait", "90"],
        cwd=tmp_path,
        env=_env(uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        url = _first_line(proc, timeout=120)
        assert url, f"no address printed; exit {proc.poll()}; stderr: {proc.stderr.read() if proc.poll() else ''}"
        exp = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("mnistgan")  # made by the ui command
        assert url == f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        assert exp.tags["mlflow.note.content"] == tracking.EXPERIMENT_NOTE  # shown as the description
        assert "one run per training" in exp.tags["mlflow.note.content"]
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and b'<div id="root"' in r.read()

        # What a browser shows at that address: the runs table (a run of ours in it) in MLflow's model-training
        # pages, not its GenAI ones (prompts, judges), which the same address with workflowType=genai opens.
        client = mlflow.MlflowClient(tracking_uri=uri)
        run_id = client.create_run(exp.experiment_id, run_name="probe-run-41a7").info.run_id
        client.set_terminated(run_id)
        shown = rendered_text(url, tmp_path)
        assert {"probe-run-41a7", "Runs", "Model registry"} <= shown and "Prompts" not in shown, sorted(shown)
        assert "Prompts" in rendered_text(url.replace(ui.VIEW_QUERY, "workflowType=genai"), tmp_path)

        # With MLFLOW_TRACKING_URI naming a server: its address, no second server, at once.
        remote = _run_ui(["--port", str(port)], f"http://127.0.0.1:{port}", tmp_path)
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout.strip() == url

        server = psutil.Process(proc.pid).children(recursive=True)
        assert any("mlflow" in " ".join(p.cmdline()) and "ui" in p.cmdline() for p in server), server
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0  # the server's own grace (10 s), then SIGKILL; slower on a busy CPU
        _, alive = psutil.wait_procs(server, timeout=10)
        assert not alive, f"left running: {alive}"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing answers on the port any more
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_taken_port_and_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = _run_ui(["--port", str(port), "--no-browser"], f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert re.fullmatch(rf"mnistgan ui: error: port {port} on 127\.0\.0\.1 is taken .*--port.*\n", p.stderr), p.stderr
    assert not (tmp_path / "mlflow.db").exists()  # it stopped before touching the store

    for argv, says in (
        (["--port", "70000"], "--port 70000"),
        (["--port", "x"], "invalid int value"),
        (["--wait", "0"], "--wait 0"),
    ):
        assert ui.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mnistgan ui: error:") and says in err, err


def test_the_runs_address_names_the_model_training_view():
    assert ui.runs_url("http://h:1/", "7") == "http://h:1/#/experiments/7/runs?workflowType=machine_learning"


def test_an_older_experiment_without_a_description_gets_one():
    """tracking.experiment_id adds the description (and the kind) to an experiment made before them."""
    calls: list[tuple[str, str, str]] = []

    class Client:
        def set_experiment_tag(self, exp_id: str, key: str, value: str) -> None:
            calls.append((exp_id, key, value))

    class Experiment:
        experiment_id, tags = "3", {"mlflow.experimentKind": "custom_model_development"}

    class FakeMlflow:
        MlflowClient = Client

        @staticmethod
        def get_experiment_by_name(name: str) -> Experiment:
            return Experiment()

    assert tracking.experiment_id(FakeMlflow, "mnistgan", Path("/nowhere")) == "3"
    assert calls == [("3", "mlflow.note.content", tracking.EXPERIMENT_NOTE)]
    Experiment.tags = {"mlflow.note.content": "the user's own words"}  # never overwritten, the kind still added
    calls.clear()
    tracking.experiment_id(FakeMlflow, "mnistgan", Path("/nowhere"))
    assert calls == [("3", "mlflow.experimentKind", "custom_model_development")]
