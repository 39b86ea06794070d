"""`make server` / `mnistgan server start|stop|status|user`: the team's MLflow tracking server.

`start` creates a PostgreSQL cluster under the git-ignored state folder (`.mlflow-server/` at the repo root,
or MNISTGAN_SERVER_DIR) with `initdb` the first time, starts it with `pg_ctl` on 127.0.0.1 (a free port chosen
once, a generated password), and starts `mlflow server` on 127.0.0.1:PORT with that database as its backend
store and its artifacts served through the server (`--serve-artifacts`), so clients need no shared disk. Both
run in the background; `stop` stops what `start` started. PostgreSQL refuses to run as root, so as root the
cluster runs as the `postgres` user (Debian's package makes it), else `nobody` (MNISTGAN_PG_USER chooses).
With MLFLOW_BACKEND_URI set (a team's own database), no cluster is made: the server uses that store.
`--host ADDRESS` (make server HOST=...) serves the network: with logins (mnistgan.lab.team), only for the host
names it serves (plus localhost), and over HTTPS with --cert/--key.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnistgan import tracking
from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import load_params
from mnistgan.errors import UserError
from mnistgan.lab import team
from mnistgan.lab.postgres import (
    DB_NAME,
    Paths,
    check_database,
    cluster_running,
    cluster_uri,
    cluster_user,
    ensure_database,
    init_cluster,
    start_cluster,
    state_paths,
    stop_cluster,
    with_driver,
    write_private,
)
from mnistgan.lab.ui import HOST, alive, check_port_free, start_mlflow_process, stop_group
from mnistgan.store import basic_auth

PROG = "mnistgan server"
DEFAULT_PORT = 5000
# ---- the MLflow server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where the server listens and how a client reaches it: host, port, HTTPS (cert, key) and the admin's
    login (None on the loopback, which serves without logins)."""

    host: str
    port: int
    cert: str = ""
    key: str = ""
    admin: dict | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.cert else 'http'}://{self.host}:{self.port}"

    def request(self, path: str) -> urllib.request.Request:
        headers = {}
        if self.admin:
            headers["Authorization"] = basic_auth(self.admin["admin"], self.admin["password"])
        return urllib.request.Request(self.base + path, headers=headers)

    def context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.cert) if self.cert else None


def answers(address: Address, path: str = "/health", timeout: float = 2) -> int | None:
    """The HTTP status of GET path on the server (as its admin); None when nothing answers."""
    try:
        with urllib.request.urlopen(address.request(path), timeout=timeout, context=address.context()) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


# Touches the backend store: answers 200 once the tables exist (MLflow migrates a new database at start).
STORE_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


def start_mlflow(paths: Paths, backend: str, address: Address, workers: int, auth_env: dict) -> subprocess.Popen:
    """`mlflow server` in the background; with `auth_env` (team.server_env) the basic-auth app, answering only
    for the host name it serves and localhost, and with address.cert HTTPS."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", address.host, "--port", str(address.port),
           "--workers", str(workers), "--serve-artifacts", "--artifacts-destination", str(paths.artifacts)]  # fmt: skip
    if auth_env:  # setting --allowed-hosts replaces MLflow's defaults: localhost is named again
        hosts = [f"{h}:{address.port}" for h in dict.fromkeys((address.host, "localhost", HOST))]
        cmd += ["--app-name", "basic-auth", "--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", address.base]
    if address.cert:
        cmd += ["--uvicorn-opts", f"--ssl-certfile {address.cert} --ssl-keyfile {address.key}"]
    # the store's URI is not on the command line: it holds a password
    return start_mlflow_process(cmd, paths.log, paths.root, {"MLFLOW_BACKEND_STORE_URI": backend} | auth_env, "ab")


def wait_ready(exited: Callable[[], int | None], address: Address, wait: float, log: Path) -> None:
    """Return once the server answers a request that reads its store; UserError when it exits
    (`exited()` gives its exit code) or `wait` seconds pass."""
    deadline, base = time.monotonic() + wait, address.base
    while answers(address, STORE_PROBE, timeout=5) != 200:
        code = exited()
        if code is not None:
            lines = [s for s in log.read_text(errors="replace").splitlines() if s.strip()]
            last = next((s for s in reversed(lines) if "Error" in s), lines[-1] if lines else "")
            raise UserError(
                f"mlflow server exited with code {code} before answering"
                f"{f' ({last.strip()[:300]})' if last else ''}; its log: {log}"
            )
        if time.monotonic() > deadline:
            raise UserError(f"mlflow server did not answer on {base} within {wait:g} s; its log: {log}")
        time.sleep(0.5)


def read_started(paths: Paths) -> dict:
    try:
        return json.loads(paths.started.read_text())
    except (OSError, ValueError):
        return {}


# ---- the commands ---------------------------------------------------------------------------------------


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def address_of(started: dict, paths: Paths) -> Address:
    """The running server's address, from started.json (with the admin's login when it has logins)."""
    admin = json.loads((paths.root / "auth.json").read_text()) if started.get("auth") else None
    return Address(started.get("host", HOST), started["port"], started.get("cert", ""), started.get("key", ""), admin)


def check_tls(cert: str, key: str) -> None:
    if bool(cert) != bool(key):
        raise UserError("CERT= and KEY= go together: give both (HTTPS) or neither")
    for name, f in (("CERT", cert), ("KEY", key)):
        if f and not Path(f).is_file():
            raise UserError(f"{name}={f}: no such file")


def start(address: Address, workers: int, wait: float) -> str:
    paths = state_paths()
    check_tls(address.cert, address.key)
    started = read_started(paths)
    if started.get("pid") and alive(started["pid"]):
        if (started.get("port"), started.get("host", HOST)) != (address.port, address.host):
            raise UserError(
                f"a server started from {paths.root} is running on {started.get('host', HOST)}:{started.get('port')} "
                f"(pid {started['pid']}); stop it first: make server-stop"
            )
        if started.get("postgres"):  # the server outlived its database (stopped by hand, a reboot of it)
            user = cluster_user(paths)
            if not cluster_running(paths, user):
                start_cluster(paths, user)
        running = address_of(started, paths)
        wait_ready(lambda: None if alive(started["pid"]) else -1, running, wait, paths.log)
        return f"already running: MLFLOW_TRACKING_URI={running.base}"
    check_port_free(address.port, taken="make ui? another server?", choose="choose another: make server PORT=...")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.artifacts.mkdir(exist_ok=True)
    external = os.environ.get("MLFLOW_BACKEND_URI", "")
    logins = address.host not in LOOPBACK
    user, began_pg = None, False
    try:
        if external:
            backend = with_driver(external)
            check_database(backend)
            auth_db = with_driver(os.environ.get("MLFLOW_AUTH_DATABASE_URI", f"sqlite:///{paths.root / 'auth.db'}"))
        else:
            user = cluster_user(paths)
            if paths.pgdata.exists() and not paths.cluster.exists():
                raise UserError(
                    f"{paths.pgdata} exists without {paths.cluster.name} (its password and port); "
                    f"remove {paths.root} to start afresh"
                )
            cluster = (
                json.loads(paths.cluster.read_text())
                if paths.cluster.exists() and paths.pgdata.exists()
                else init_cluster(paths, user)
            )
            if not cluster_running(paths, user):
                start_cluster(paths, user)
                began_pg = True
            for name in (DB_NAME, team.AUTH_DB) if logins else (DB_NAME,):
                ensure_database(cluster, name)
            backend, auth_db = cluster_uri(cluster), cluster_uri(cluster, team.AUTH_DB)
        auth_env = team.server_env(paths.root, auth_db, write_private) if logins else {}
        if logins:
            address = dataclasses.replace(address, admin=team.auth_settings(paths.root, write_private))
        proc = start_mlflow(paths, backend, address, workers, auth_env)
        try:
            wait_ready(proc.poll, address, wait, paths.log)
        except BaseException:
            stop_group(proc.pid)
            raise
    except BaseException:
        if began_pg:  # back to how it was: nothing left running by a start that failed
            with contextlib.suppress(UserError, OSError, subprocess.SubprocessError):
                stop_cluster(paths, user)
        raise
    write_private(paths.started, {"pid": proc.pid, "host": address.host, "port": address.port, "cert": address.cert,
                                  "key": address.key, "auth": logins, "postgres": not external})  # fmt: skip
    store = "MLFLOW_BACKEND_URI" if external else f"PostgreSQL in {paths.pgdata}"
    notes = [f"store: {store}", f"artifacts: {paths.artifacts}", f"log: {paths.log}"]
    if logins:
        notes.append(f"logins: admin's password in {paths.root / 'auth.json'}; add users: mnistgan server user add")
    if logins and not address.cert:
        print(f"server: warning: {address.base} serves HTTP: logins and data cross the network unencrypted "
              "(CERT=... KEY=... serves HTTPS)", file=sys.stderr)  # fmt: skip
    return f"MLFLOW_TRACKING_URI={address.base} ({'; '.join(notes)})"


def stop() -> str:
    paths = state_paths()
    started, done = read_started(paths), []
    if started.get("pid") and alive(started["pid"]):
        stop_group(started["pid"])
        done.append(f"mlflow server (pid {started['pid']})")
    if paths.pgdata.exists() and started.get("postgres", True):
        user = cluster_user(paths)
        if cluster_running(paths, user):
            stop_cluster(paths, user)
            done.append("PostgreSQL")
    paths.started.unlink(missing_ok=True)
    return f"stopped {' and '.join(done)}" if done else "nothing was running"


def status() -> tuple[int, str]:
    """Exit 0 when the server answers and its store does too, 3 otherwise (LSB's 'not running')."""
    paths = state_paths()
    started = read_started(paths)
    if not (started.get("pid") and alive(started["pid"])):
        return 3, "not running"
    address = address_of(started, paths)
    code = answers(address, STORE_PROBE, timeout=10)
    if code == 200:
        return 0, f"running: MLFLOW_TRACKING_URI={address.base} (pid {started['pid']})"
    return 3, f"mlflow server pid {started['pid']} on {address.base}: its store does not answer (HTTP {code})"


def user_command(args: argparse.Namespace) -> int:
    """`user add NAME --role R` (prints the password once, as the line's last word), `user remove NAME`,
    `user list`: as the admin of the running server."""
    paths = state_paths()
    started = read_started(paths)
    if not (started.get("pid") and alive(started["pid"])):
        raise UserError("no server is running from here: make server HOST=...")
    if not started.get("auth"):
        raise UserError(f"the server on {started.get('host', HOST)} has no logins (a loopback server); "
                        "start it on the network address: make server HOST=...")  # fmt: skip
    address = address_of(started, paths)
    admin = team.Admin(address.base, address.admin, address.cert or None)
    experiment = load_params(tracking.repo_root() / "params.yaml").tracking.experiment
    if args.action == "list":
        print("\n".join(team.list_users(admin, experiment)))
        return 0
    if not args.name:
        raise UserError(f"user {args.action}: give the user's name")
    if args.action == "remove":
        team.remove_user(admin, args.name)
        print(f"server: removed user {args.name}")
        return 0
    password = team.add_user(admin, args.name, args.role, experiment)
    print(f"server: added {args.role} {args.name} on {address.base}; MLFLOW_TRACKING_USERNAME={args.name}")
    print(f"server: {args.name}'s password (shown once): {password}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["start", "stop", "status", "user"])
    p.add_argument("action", nargs="?", choices=["add", "remove", "list"], help="user: add, remove or list")
    p.add_argument("name", nargs="?", help="user add/remove: the login's name")
    p.add_argument("--role", choices=team.ROLES, default="reader", help="user add: reader (default) or editor")
    p.add_argument("--host", default=HOST, help="address or name to serve on (default: %(default)s, no logins)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    p.add_argument("--cert", default="", help="TLS certificate (PEM): serve HTTPS, with --key")
    p.add_argument("--key", default="", help="TLS private key (PEM)")
    p.add_argument("--workers", type=int, default=2, help="server processes (default: %(default)s)")
    p.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the server (default: %(default)s)")
    return p


def server_command(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 1 and 65535")
    if args.workers < 1 or args.wait <= 0:
        raise UserError("--workers and --wait must be positive")
    if args.command == "user":
        if not args.action:
            raise UserError("user: say add, remove or list")
        return user_command(args)
    if args.command == "start":
        cert, key = (str(Path(f).resolve()) if f else "" for f in (args.cert, args.key))
        print(f"server: {start(Address(args.host, args.port, cert, key), args.workers, args.wait)}")
        return 0
    if args.command == "stop":
        print(f"server: {stop()}")
        return 0
    code, line = status()
    print(f"server: {line}")
    return code


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), server_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
