"""`make server` (mnistgan.lab.server): a real MLflow server on a real PostgreSQL cluster, in a temporary state folder.

Worker clones log their experiments to it and a third clone gathers them, the generator downloads through it
from another folder, a restart of server and database while training is survived, a stopped database gives one
line within seconds, and `stop` leaves no process behind. Skipped without PostgreSQL's binaries (failed instead
with MNISTGAN_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from pipeline_utils import BIN, dvc, env, free_port, require_postgres, run, server_cmd, server_state_dir
from test_determinism import copy_reproduced

from mnistgan.lab import postgres

pytestmark = pytest.mark.slow

PYTHON = str(BIN / "python")


@pytest.fixture(scope="module")
def srv():
    """(tracking URI, state folder) of a server started by `python -m mnistgan.lab.server start`."""
    require_postgres()
    state, port = server_state_dir(), free_port()
    try:
        t0 = time.monotonic()
        out = server_cmd("start", state, port).stdout
        print(f"server started in {time.monotonic() - t0:.1f} s: {out.strip()}")
        yield f"http://127.0.0.1:{port}", state
    finally:
        server_cmd("stop", state, check=False)
        shutil.rmtree(state, ignore_errors=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pg_rows(state: Path, sql: str) -> list[tuple]:
    """Rows straight from the cluster's database: what MLflow stored in PostgreSQL."""
    import psycopg2

    cluster = json.loads((state / "cluster.json").read_text())
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=cluster["port"],
        user="mlflow",
        password=cluster["password"],
        dbname="mlflow",
        connect_timeout=5,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


WORKERS = {"worker-a": ["-S", "seed=11"], "worker-b": ["-S", "seed=12", "-S", "train.loss=hinge"]}  # each its seed


def test_worker_clones_log_to_the_server_push_their_experiments_and_a_third_clone_gathers_them(
    srv, tmp_path, tmp_path_factory
):
    """Sweeps from several machines, gathered in one place: two worker clones (standing in for two machines)
    each run `dvc exp run` with other params, log to the server, and push their experiments to one shared Git
    remote (a bare repo) and their outputs to one shared DVC remote (a folder); a third clone pulls them all
    and compares them. What the server holds is checked in PostgreSQL itself, and the generator downloads
    through the server from a folder that is no repo."""
    import mlflow

    server_uri, state = srv
    # The team's repo: the tiny pipeline's results committed, its outputs in the shared DVC remote, and a bare
    # Git repo every machine clones from and pushes to.
    origin, _ = copy_reproduced(tmp_path_factory, tmp_path / "origin-work")
    storage, bare = tmp_path / "dvc-storage", tmp_path / "origin.git"
    dvc(["remote", "add", "-d", "shared", str(storage)], origin)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-q", "-m", "pipeline results and the shared remote"], origin)
    dvc(["push"], origin)
    run(["git", "clone", "-q", "--bare", str(origin), str(bare)], tmp_path)

    tracked = {"MLFLOW_TRACKING_URI": server_uri, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, overrides in WORKERS.items():  # both machines at once
        clone = tmp_path / name
        run(["git", "clone", "-q", str(bare), str(clone)], tmp_path)
        dvc(["pull"], clone)  # the team's outputs: only the changed stages rerun
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process below)
        cmd = [str(BIN / "dvc"), "exp", "run", "-n", f"{name}-sweep", *overrides]
        procs[name] = subprocess.Popen(cmd, cwd=clone, env=env() | tracked, stdout=log, stderr=subprocess.STDOUT), log
    for name, (proc, log) in procs.items():
        code = proc.wait(timeout=900)
        log.close()
        assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        out = dvc(["exp", "push", "origin", f"{name}-sweep"], tmp_path / name).stdout  # refs to Git, outputs to DVC
        assert "Pushed experiment" in out, out
    names = {f"{name}-sweep" for name in WORKERS}

    # The third clone gathers everything: experiments from Git, outputs from the DVC remote, runs from the server.
    lead = tmp_path / "lead"
    run(["git", "clone", "-q", str(bare), str(lead)], tmp_path)
    dvc(["pull"], lead)  # the team's committed outputs, whole from the DVC remote: nothing to rerun
    for f in ("models/generator.pt", "models/classifier.pt", "data/samples.npy", "data/mnist/x_train.npy"):
        assert (lead / f).exists(), f
    assert "Running stage" not in dvc(["repro"], lead).stdout
    assert "up to date" in dvc(["status"], lead).stdout
    dvc(["exp", "pull", "origin"], lead)
    assert set(dvc(["exp", "ls", "--name-only"], lead).stdout.split()) == names
    shown = json.loads(dvc(["exp", "show", "--json", "--no-pager"], lead).stdout)
    exps = {e["name"]: e["revs"][0]["data"] for c in shown for e in (c.get("experiments") or [])}
    assert set(exps) == names
    for name, data in exps.items():
        seed = data["params"]["params.yaml"]["data"]["seed"]
        assert seed == (11 if name == "worker-a-sweep" else 12)
        assert "fid" in data["metrics"]["metrics/eval.json"]["data"]["generated"], name
    text = dvc(
        ["exp", "show", "--no-pager", "--md", "--drop", ".*", "--keep", r"Experiment|^seed$|generated\.fid$"], lead
    ).stdout
    assert all(name in text for name in names), text

    for name in names:  # every experiment's outputs come from the shared DVC remote, whole
        dvc(["exp", "apply", name], lead)
        dvc(["pull"], lead)
        assert "Data and pipelines are up to date" in dvc(["status"], lead).stdout, name

    # `make compare` and `make results` (their commands; this clone has no venv) over the server's runs
    lead_env = env() | {"MLFLOW_TRACKING_URI": server_uri}
    run([str(BIN / "python"), "-m", "mnistgan.lab.report", "compare", "--out", "reports"], lead, env=lead_env)
    compare = (lead / "reports/compare.md").read_text()
    assert all(name in compare for name in names), compare[:2000]
    assert len(list((lead / "reports/compare_files").rglob("*.png"))) >= 3  # grids downloaded through the server
    table = run([str(BIN / "python"), "-m", "mnistgan.lab.report", "results"], lead, env=lead_env).stdout
    assert "| recipe | seeds |" in table, table

    client = mlflow.MlflowClient(tracking_uri=server_uri)
    runs = client.search_runs([client.get_experiment_by_name("mnistgan").experiment_id])
    assert {r.data.tags.get("dvc_exp_name") for r in runs} == names
    assert {r.info.status for r in runs} == {"FINISHED"}

    # What the server stored for worker-a's run, read from PostgreSQL; its artifacts are served, not on a disk
    worker = tmp_path / "worker-a"
    run_id = json.loads((worker / "metrics/train.json").read_text())["mlflow_run_id"]
    rows = pg_rows(state, f"SELECT status, name, artifact_uri FROM runs WHERE run_uuid = '{run_id}'")
    assert rows and rows[0][0] == "FINISHED" and rows[0][1] == "worker-a-sweep", rows
    assert rows[0][2].startswith("mlflow-artifacts:/"), rows  # proxied by the server: no path on the client's disk
    metrics = dict(pg_rows(state, f"SELECT key, value FROM latest_metrics WHERE run_uuid = '{run_id}'"))
    ev = json.loads((worker / "metrics/eval.json").read_text())
    assert metrics["generated.fid"] == pytest.approx(ev["generated"]["fid"])
    assert not (worker / "mlflow.db").exists() and not (worker / "mlartifacts").exists()  # nothing went local
    assert len(client.get_metric_history(run_id, "loss_d")) > 3  # the loss curves
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith("images/final_samples") and p.endswith(".png") for p in images), images

    elsewhere = tmp_path / "elsewhere"  # another folder, no repo: only the server's address
    elsewhere.mkdir()
    code = (
        "import mlflow, sys; print(mlflow.artifacts.download_artifacts(run_id=sys.argv[1], "
        "artifact_path='model/generator.pt', dst_path='got'))"
    )
    got = run([PYTHON, "-c", code, run_id], elsewhere, env=env() | {"MLFLOW_TRACKING_URI": server_uri}).stdout
    assert sha256(Path(got.strip())) == sha256(worker / "models/generator.pt")
    assert (state / "artifacts").is_dir() and any((state / "artifacts").rglob("generator.pt"))
    for r in runs:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert "generated.fid" in r.data.metrics


def test_a_restart_of_server_and_database_while_training_is_survived(srv, tmp_path, tmp_path_factory):
    import mlflow

    uri, state = srv
    root, _ = copy_reproduced(tmp_path_factory, tmp_path / "repo")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"] |= {"steps": 600, "log_every": 10, "checkpoint_every": 300, "image_every": 300}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "models/checkpoint.pt").unlink()
    log = tmp_path / "train.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [PYTHON, "stages/train.py"],
            cwd=root,
            env=env() | {"MLFLOW_TRACKING_URI": uri},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        deadline, logged = time.monotonic() + 300, []
        while not logged and time.monotonic() < deadline:  # wait for the first loss rows on the server
            assert proc.poll() is None, log.read_text()[-3000:]
            runs = (
                client.search_runs([client.get_experiment_by_name("mnistgan").experiment_id])
                if client.get_experiment_by_name("mnistgan")
                else []
            )
            mine = [r for r in runs if r.data.tags.get("mnistgan.pid") == str(proc.pid)]
            logged = mine and client.get_metric_history(mine[0].info.run_id, "loss_d")
            time.sleep(0.5)
        assert logged, "no loss rows on the server"
        server_cmd("stop", state)
        down_while_training = proc.poll() is None
        time.sleep(2)  # the client meets a refused connection and retries
        server_cmd("start", state, int(uri.rsplit(":", 1)[1]))
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert down_while_training, "training ended before the restart; nothing was tested"
    assert code == 0, log.read_text()[-3000:]
    run_id = mine[0].info.run_id
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss_d")]
    assert steps == list(range(10, 601, 10)), f"{len(logged)} rows before the restart; after: {steps}"


def test_a_stopped_database_gives_one_clear_line_within_seconds(srv, tmp_path, tmp_path_factory):
    uri, state = srv
    paths = postgres.Paths(state)
    postgres.stop_cluster(paths, postgres.cluster_user(paths))  # the database alone: the MLflow server still answers
    try:
        root, _ = copy_reproduced(tmp_path_factory, tmp_path / "repo")
        t0 = time.monotonic()
        p = run([PYTHON, "stages/train.py"], root, check=False, env=env() | {"MLFLOW_TRACKING_URI": uri})
        seconds = time.monotonic() - t0
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
        assert lines[0] == f"train: error: tracking server {uri} cannot reach its backend store (HTTP 503)"
        assert seconds < 15, f"took {seconds:.1f} s"
        s = server_cmd("status", state, check=False)
        assert s.returncode == 3 and "its store does not answer (HTTP 503)" in s.stdout, s.stdout + s.stderr
    finally:
        # `start` on a running server whose database stopped starts the database again
        assert "already running" in server_cmd("start", state, int(uri.rsplit(":", 1)[1])).stdout
    assert server_cmd("status", state).stdout.startswith("server: running")


def test_a_team_database_that_does_not_answer_fails_start_with_one_line(tmp_path):
    require_postgres()
    state, port = server_state_dir(), free_port()
    try:
        dead = f"postgresql://mlflow:secret@127.0.0.1:{free_port()}/mlflow"
        t0 = time.monotonic()
        p = server_cmd("start", state, port, extra_env={"MLFLOW_BACKEND_URI": dead}, check=False)
        assert p.returncode == 2, p.stdout + p.stderr
        line = p.stderr.strip()
        assert "\n" not in line and line.startswith(
            f"mnistgan server: error: MLFLOW_BACKEND_URI (...@127.0.0.1:{dead.rsplit(':', 1)[1]}): cannot connect"
        ), line
        assert "secret" not in line
        assert time.monotonic() - t0 < 15
        assert not (state / "started.json").exists() and not (state / "pgdata").exists()
        assert server_cmd("status", state, check=False).returncode == 3
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_stop_stops_everything_it_started(srv):
    uri, state = srv
    started = json.loads((state / "started.json").read_text())
    group = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == started["pid"]]
    postmaster = int((state / "pgdata/postmaster.pid").read_text().split()[0])
    assert group and psutil.pid_exists(postmaster)
    assert server_cmd("stop", state).stdout.startswith("server: stopped mlflow server")
    _, alive = psutil.wait_procs(group + [psutil.Process(postmaster)], timeout=15)
    assert not alive, alive
    assert not (state / "started.json").exists() and not (state / "pgdata/postmaster.pid").exists()
    assert server_cmd("status", state, check=False).returncode == 3
    assert server_cmd("stop", state).stdout.strip() == "server: nothing was running"


def _pgid(pid: int) -> int | None:
    import os

    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_bad_input_gives_one_line(tmp_path):
    taken = free_port()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        p = server_cmd("start", tmp_path / "state", taken, check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"mnistgan server: error: port {taken} on 127.0.0.1 is taken (make ui? another server?); "
        "choose another: make server PORT=..."
    ]
    assert not (tmp_path / "state").exists()
    p = run([PYTHON, "-m", "mnistgan.lab.server", "restart"], tmp_path, check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
