"""`make server HOST=...` across a network: a server host and a client host, each a network namespace of this
test's own (`ip netns`), joined by a veth pair with addresses that exist only inside them. The server runs in
one, every client in the other; traffic goes to those two addresses and to loopback only. Logins (401 without
one), a reader (reads and downloads; 403 on writes), an editor (the tiny pipeline through the server), a Host
header it does not serve (403), HTTPS with a self-signed certificate, and `make server-stop`.

Minutes of their own (a server start, two pipeline runs): run by `make soak` (MNISTGAN_SOAK=1), which CI runs
after `make test`. Needs root (ip netns), PostgreSQL and openssl; skipped without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pipeline_utils import BIN, ROOT, env, require_postgres, run, server_state_dir
from test_determinism import copy_reproduced

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("MNISTGAN_SOAK"), reason="minutes: make soak (MNISTGAN_SOAK=1) runs it"),
]

SUBNET = "10.231.7"  # private, and only inside this test's two namespaces
SERVER_IP, CLIENT_IP, PORT = f"{SUBNET}.1", f"{SUBNET}.2", 5123
PYTHON = str(BIN / "python")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    """(server namespace, client namespace): two hosts joined by a veth pair; removed afterwards, whatever
    happened, with every process still inside them."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("openssl") or not shutil.which("curl"):
        pytest.skip("needs root, ip (iproute2), openssl and curl")
    require_postgres()
    tag = f"{os.getpid() % 100000}"
    srv, cli = f"mg-srv-{tag}", f"mg-cli-{tag}"
    try:
        for ns in (srv, cli):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", f"veth-s{tag}", "netns", srv, "type", "veth", "peer", "name", f"veth-c{tag}", "netns", cli)
        for ns, dev, addr in ((srv, f"veth-s{tag}", SERVER_IP), (cli, f"veth-c{tag}", CLIENT_IP)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        yield srv, cli
    finally:
        for ns in (srv, cli):
            pids = ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], check=False)
            ip("netns", "del", ns, check=False)
        names = ip("netns", "list", check=False).stdout
        assert srv not in names and cli not in names


def in_ns(ns: str, cmd: list[str], cwd: Path, extra: dict[str, str] | None = None, check: bool = True, timeout=900):
    return run(["ip", "netns", "exec", ns, *cmd], cwd, check=check, timeout=timeout, env=env() | (extra or {}))


def curl(cli: str, url: str, *args: str) -> int:
    """The HTTP status a client host gets (000: no answer)."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20", *args, url]
    out = in_ns(cli, cmd, ROOT, check=False)  # curl exits non-zero when no HTTP answer comes (52: empty reply)
    return int(out.stdout.strip() or 0)


def make_server(srv: str, state: Path, *extra: str) -> str:
    e = {"MNISTGAN_SERVER_DIR": str(state), "PATH": f"{BIN}:{os.environ['PATH']}"}
    return in_ns(srv, ["make", "-s", "server", f"HOST={SERVER_IP}", f"PORT={PORT}", *extra], ROOT, e).stdout


def stop_server(srv: str, state: Path) -> None:
    in_ns(srv, ["make", "-s", "server-stop"], ROOT, {"MNISTGAN_SERVER_DIR": str(state)})


def add_user(srv: str, state: Path, name: str, role: str) -> str:
    out = in_ns(srv, [PYTHON, "-m", "mnistgan.lab.server", "user", "add", name, "--role", role], ROOT,
                {"MNISTGAN_SERVER_DIR": str(state)}).stdout  # fmt: skip
    (line,) = [s for s in out.splitlines() if "password" in s]
    return line.split()[-1]


def login(name: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"http://{SERVER_IP}:{PORT}", "MLFLOW_TRACKING_USERNAME": name,
            "MLFLOW_TRACKING_PASSWORD": password}  # fmt: skip


def server_processes(state: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [p for p in ps if str(state) in p and "ps -eo" not in p]


def test_logins_roles_host_check_https_and_stop_across_two_hosts(hosts, tmp_path, tmp_path_factory):
    srv, cli = hosts
    state = server_state_dir()
    base = f"http://{SERVER_IP}:{PORT}"
    try:
        out = make_server(srv, state)
        assert f"MLFLOW_TRACKING_URI={base}" in out and "logins" in out, out
        assert (state / "auth.json").stat().st_mode & 0o777 == 0o600

        # No login, or a wrong one: 401 for the REST API, the UI's API and artifact downloads.
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        for path in (search, "/ajax-api/2.0/mlflow/experiments/search?max_results=1",
                     "/api/2.0/mlflow-artifacts/artifacts/0/x/model/generator.pt"):  # fmt: skip
            assert curl(cli, base + path) == 401, path
            assert curl(cli, base + path, "-u", "admin:wrong-password-123") == 401, path
        # A Host header the server does not serve: refused, even with the admin's login.
        admin = json.loads((state / "auth.json").read_text())
        assert curl(cli, base + search, "-u", f"admin:{admin['password']}") == 200
        assert curl(cli, base + search, "-u", f"admin:{admin['password']}", "-H", f"Host: elsewhere:{PORT}") == 403

        editor, reader = add_user(srv, state, "ed", "editor"), add_user(srv, state, "rea", "reader")
        listed = in_ns(srv, [PYTHON, "-m", "mnistgan.lab.server", "user", "list"], ROOT,
                       {"MNISTGAN_SERVER_DIR": str(state)}).stdout.split("\n")  # fmt: skip
        assert {"admin admin", "ed editor", "rea reader"} <= set(listed), listed

        # The editor runs the tiny pipeline through the server from the client host.
        root, _ = copy_reproduced(tmp_path_factory, tmp_path / "repo")
        dvc_bin = str(BIN / "dvc")
        in_ns(cli, [dvc_bin, "exp", "run", "-n", "through-login", "-S", "seed=9"], root, login("ed", editor))
        run_id = json.loads((root / "metrics/train.json").read_text())["mlflow_run_id"]
        check = ("import mlflow, sys; c = mlflow.MlflowClient(); r = c.get_run(sys.argv[1]); "
                 "print(r.info.status, r.info.run_name)")  # fmt: skip
        status = in_ns(cli, [PYTHON, "-c", check, run_id], tmp_path, login("rea", reader)).stdout.split()
        assert status == ["FINISHED", "through-login"], status

        # The reader reads runs and downloads the generator ...
        got = in_ns(cli, [PYTHON, "-m", "mnistgan", "generate", "--model-uri", "models:/mnistgan-generator/latest",
                          "--digit", "3", "--n", "4", "--out", str(tmp_path / "threes.npy")], tmp_path,
                    login("rea", reader))  # fmt: skip
        assert (tmp_path / "threes.npy").exists(), got.stdout + got.stderr
        # ... and compares the runs: `make compare` and `make results` through the login
        report = [PYTHON, "-m", "mnistgan.lab.report"]
        in_ns(cli, [*report, "compare", "--out", str(tmp_path / "reports")], root, login("rea", reader))
        assert "through-login" in (tmp_path / "reports/compare.md").read_text()
        table = in_ns(cli, [*report, "results"], root, login("rea", reader)).stdout
        assert "| recipe | seeds |" in table, table
        # ... and is refused (403) creating a run or registering a model version.
        refuse = (
            "import mlflow, sys\n"
            "c = mlflow.MlflowClient()\n"
            "exp = c.get_experiment_by_name('mnistgan').experiment_id\n"
            "for name, call in (('run', lambda: c.create_run(exp)),\n"
            "                   ('version', lambda: c.create_model_version('mnistgan-generator', 's', sys.argv[1]))):\n"
            "    try:\n"
            "        call(); print(name, 'ALLOWED')\n"
            "    except mlflow.exceptions.MlflowException as e:\n"
            "        print(name, e.get_http_status_code())\n"
        )  # fmt: skip
        lines = in_ns(cli, [PYTHON, "-c", refuse, run_id], tmp_path, login("rea", reader)).stdout.split("\n")
        assert "run 403" in lines and "version 403" in lines, lines
        # A stage run by the reader stops in one line naming the server and what it refused.
        stage = in_ns(cli, [PYTHON, "stages/train.py"], root, login("rea", reader), check=False)
        errors = [line for line in stage.stderr.splitlines() if "error" in line or "Traceback" in line]
        assert stage.returncode == 2 and len(errors) == 1, stage.stderr[-2000:]
        assert errors[0].startswith(f"train: error: tracking server {base} does not allow user 'rea'"), errors
        wrong = in_ns(cli, [PYTHON, "stages/train.py"], root, login("rea", "nope"), check=False)
        assert wrong.returncode == 2 and "refused the login of user 'rea' (401)" in wrong.stderr, wrong.stderr[-2000:]

        # HTTPS with a self-signed certificate for the server's address.
        stop_server(srv, state)
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        f"/CN={SERVER_IP}", "-addext", f"subjectAltName=IP:{SERVER_IP}", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True, timeout=60)  # fmt: skip
        out = make_server(srv, state, f"CERT={cert}", f"KEY={key}")
        https = f"https://{SERVER_IP}:{PORT}"
        assert f"MLFLOW_TRACKING_URI={https}" in out, out
        assert curl(cli, base + search) == 0  # plain HTTP to that port gets no answer
        tls = login("ed", editor) | {"MLFLOW_TRACKING_URI": https, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert)}
        in_ns(cli, [dvc_bin, "exp", "run", "-n", "over-tls", "-S", "seed=10"], root, tls)
        run_id = json.loads((root / "metrics/train.json").read_text())["mlflow_run_id"]
        status = in_ns(cli, [PYTHON, "-c", check, run_id], tmp_path, tls).stdout.split()
        assert status == ["FINISHED", "over-tls"], status
    finally:
        stop_server(srv, state)
        deadline = time.monotonic() + 30
        while server_processes(state) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = server_processes(state)
        shutil.rmtree(state, ignore_errors=True)
    assert not left, f"make server-stop left processes behind: {left}"
