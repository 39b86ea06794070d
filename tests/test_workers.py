"""Sweeps from several machines, gathered in one place: two worker clones (standing in for two machines) each
run `dvc exp run` with other params, log to one `make server` store, and push their experiments to one shared
Git remote (a bare repo) and their outputs to one shared DVC remote (a folder); a third clone pulls them all
and compares them. Skipped without PostgreSQL's binaries (failed instead with MNISTGAN_REQUIRE_POSTGRES=1)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from pipeline_utils import BIN, dvc, env, free_port, require_postgres, run, server_cmd, server_state_dir
from test_determinism import copy_reproduced

pytestmark = pytest.mark.slow

# What each machine sweeps: its own seed, and the second another loss too.
WORKERS = {"worker-a": ["-S", "seed=11"], "worker-b": ["-S", "seed=12", "-S", "train.loss=hinge"]}


@pytest.fixture(scope="module")
def server_uri():
    require_postgres()
    state, port = server_state_dir(), free_port()
    try:
        server_cmd("start", state, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server_cmd("stop", state, check=False)
        shutil.rmtree(state, ignore_errors=True)


def test_two_worker_clones_push_their_experiments_and_a_third_clone_gathers_them(
    server_uri, tmp_path, tmp_path_factory
):
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

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server_uri)
    runs = client.search_runs([client.get_experiment_by_name("mnistgan").experiment_id])
    assert {r.data.tags.get("dvc_exp_name") for r in runs} == names
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert "generated.fid" in r.data.metrics
