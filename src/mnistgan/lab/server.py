"""`make server` / `mnistgan server start|stop|status`: the team's MLflow tracking server.

`start` creates a PostgreSQL cluster under the git-ignored state folder (`.mlflow-server/` at the repo root,
or MNISTGAN_SERVER_DIR) with `initdb` the first time, starts it with `pg_ctl` on 127.0.0.1 (a free port chosen
once, a generated password), and starts `mlflow server` on 127.0.0.1:PORT with that database as its backend
store and its artifacts served through the server (`--serve-artifacts`), so clients need no shared disk. Both
run in the background; `stop` stops what `start` started. PostgreSQL refuses to run as root, so as root the
cluster runs as the `postgres` user (Debian's package makes it), else `nobody` (MNISTGAN_PG_USER chooses).
With MLFLOW_BACKEND_URI set (a team's own database), no cluster is made: the server uses that store.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnistgan import tracking
from mnistgan.cli import OneLineParser, run_command
from mnistgan.errors import UserError
from mnistgan.lab.ui import HOST, alive, check_port_free, stop_group

PROG = "mnistgan server"
DEFAULT_PORT = 5000
STATE_DIR = ".mlflow-server"
DB_NAME = DB_USER = "mlflow"


@dataclass(frozen=True)
class Paths:
    """The state folder's layout."""

    root: Path

    @property
    def pgdata(self) -> Path:  # the cluster, owned by the PostgreSQL user
        return self.root / "pgdata"

    @property
    def pglog(self) -> Path:  # in a folder of its own: the PostgreSQL user writes it
        return self.root / "pglog" / "postgres.log"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def log(self) -> Path:
        return self.root / "mlflow.log"

    @property
    def cluster(self) -> Path:  # port, password and user of the local cluster (mode 600)
        return self.root / "cluster.json"

    @property
    def started(self) -> Path:  # what `start` started: the server's pid, its port, whether it started PostgreSQL
        return self.root / "started.json"


def state_paths() -> Paths:
    return Paths(Path(os.environ.get("MNISTGAN_SERVER_DIR") or tracking.repo_root() / STATE_DIR).resolve())


# ---- PostgreSQL -----------------------------------------------------------------------------------------


def pg_bin(name: str) -> str:
    """initdb / pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest version)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return versions[-1]
    raise UserError(f"PostgreSQL's {name} not found (install Debian's postgresql package, or set "
                    "MLFLOW_BACKEND_URI to a database you already have)")  # fmt: skip


def pg_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (this one) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    names = [os.environ["MNISTGAN_PG_USER"]] if os.environ.get("MNISTGAN_PG_USER") else ["postgres", "nobody"]
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise UserError(f"running as root, and no user {' or '.join(names)} to run PostgreSQL as (MNISTGAN_PG_USER)")


def check_reachable(user: pwd.struct_passwd, folder: Path) -> None:
    """Every folder above `folder` must let `user` through, or initdb fails deep inside with a vaguer line."""
    groups = {g for g in os.getgrouplist(user.pw_name, user.pw_gid)}
    for parent in reversed(folder.parents):
        st = parent.stat()
        ok = (st.st_mode & stat.S_IXOTH) or (st.st_uid == user.pw_uid and st.st_mode & stat.S_IXUSR) or \
            (st.st_gid in groups and st.st_mode & stat.S_IXGRP)  # fmt: skip
        if not ok:
            raise UserError(f"PostgreSQL runs as user {user.pw_name}, who cannot enter {parent}; choose a state "
                            "folder it can reach with MNISTGAN_SERVER_DIR")  # fmt: skip


def as_pg(cmd: list[str], user: pwd.struct_passwd | None, **kw) -> subprocess.CompletedProcess:
    """Run a PostgreSQL command as `user` (root may switch; others run as themselves)."""
    if user is not None:
        kw |= {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
               "env": {"PATH": os.environ.get("PATH", ""), "HOME": "/", "LC_ALL": "C"}}  # fmt: skip
    return subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def _pg_error(what: str, p: subprocess.CompletedProcess, log: Path | None = None) -> UserError:
    lines = [s.strip() for s in (p.stderr + p.stdout).splitlines() if s.strip()]
    if log and log.exists():
        lines += [s.strip() for s in log.read_text(errors="replace").splitlines() if s.strip()]
    last = next((s for s in reversed(lines) if "FATAL" in s or "error" in s.lower()), lines[-1] if lines else "")
    return UserError(f"{what} failed (exit {p.returncode}){f': {last[:300]}' if last else ''}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def init_cluster(paths: Paths, user: pwd.struct_passwd | None) -> dict:
    """A new cluster in paths.pgdata: superuser `mlflow` with a generated password, TCP on 127.0.0.1 only."""
    if user is not None:
        check_reachable(user, paths.root)
    cluster = {"port": free_port(), "password": secrets.token_urlsafe(24), "user": user.pw_name if user else ""}
    paths.pgdata.mkdir(mode=0o700)
    paths.pglog.parent.mkdir(exist_ok=True)
    f = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=paths.root, delete=False) as f:
            f.write(cluster["password"] + "\n")
        for p in (paths.pgdata, paths.pglog.parent, Path(f.name)):
            if user is not None:
                os.chown(p, user.pw_uid, user.pw_gid)
        p = as_pg([pg_bin("initdb"), "-D", str(paths.pgdata), "-U", DB_USER, f"--pwfile={f.name}", "-E", "UTF8",
                   "--no-locale", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256"], user)  # fmt: skip
        os.unlink(f.name)
        if p.returncode != 0:
            raise _pg_error("initdb", p)
        # TCP on the loopback only; no Unix socket (its default folder, /var/run/postgresql, may not exist)
        with open(paths.pgdata / "postgresql.conf", "a") as conf:
            conf.write(f"\n# mnistgan server\nlisten_addresses = '{HOST}'\nport = {cluster['port']}\n"
                       "unix_socket_directories = ''\n")  # fmt: skip
        write_private(paths.cluster, cluster)
    except BaseException:
        shutil.rmtree(paths.pgdata, ignore_errors=True)  # nothing half-made: the next start begins afresh
        if f is not None:
            with contextlib.suppress(OSError):
                os.unlink(f.name)
        raise
    return cluster


def write_private(path: Path, data: dict) -> None:
    """JSON readable by this user only, written whole (a temp file renamed over it)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def cluster_user(paths: Paths) -> pwd.struct_passwd | None:
    """The account the existing cluster was made for (its files are that user's), else pg_user()."""
    try:
        name = json.loads(paths.cluster.read_text()).get("user", "")
    except (OSError, ValueError):
        name = ""
    if name and os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return pg_user()


def cluster_running(paths: Paths, user: pwd.struct_passwd | None) -> bool:
    if not paths.pgdata.exists():
        return False
    return as_pg([pg_bin("pg_ctl"), "-D", str(paths.pgdata), "status"], user, timeout=30).returncode == 0


def start_cluster(paths: Paths, user: pwd.struct_passwd | None) -> None:
    # its own session: a Ctrl-C in the terminal that ran `make server` must not reach the database later
    p = as_pg([pg_bin("pg_ctl"), "-D", str(paths.pgdata), "-l", str(paths.pglog), "-w", "-t", "60", "start"], user,
              start_new_session=True)  # fmt: skip
    if p.returncode != 0:
        raise _pg_error("pg_ctl start", p, paths.pglog)


def stop_cluster(paths: Paths, user: pwd.struct_passwd | None) -> None:
    p = as_pg([pg_bin("pg_ctl"), "-D", str(paths.pgdata), "-m", "fast", "-w", "-t", "60", "stop"], user)
    if p.returncode != 0 and cluster_running(paths, user):
        raise _pg_error("pg_ctl stop", p)


def cluster_uri(cluster: dict, db: str = DB_NAME) -> str:
    return f"postgresql+psycopg2://{DB_USER}:{cluster['password']}@{HOST}:{cluster['port']}/{db}"


def ensure_database(cluster: dict) -> None:
    """CREATE DATABASE mlflow once (initdb makes only `postgres`)."""
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=cluster["port"], user=DB_USER, password=cluster["password"],
                            dbname="postgres", connect_timeout=10)  # fmt: skip
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        conn.close()


def with_driver(uri: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the pinned driver here is psycopg2."""
    for bare in ("postgresql://", "postgres://"):
        if uri.startswith(bare):
            return "postgresql+psycopg2://" + uri[len(bare) :]
    return uri


def check_database(uri: str, timeout: int = 5) -> None:
    """A user's own store (MLFLOW_BACKEND_URI) must answer within seconds: one line naming it otherwise."""
    from sqlalchemy import create_engine, text

    shown = uri.split("@")[-1] if "@" in uri else uri  # no password in messages
    args = {"connect_timeout": timeout} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = create_engine(uri, connect_args=args)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"MLFLOW_BACKEND_URI (...@{shown}): cannot connect ({first[:200]})") from None


# ---- the MLflow server ----------------------------------------------------------------------------------


def answers(base: str, path: str = "/health", timeout: float = 2) -> int | None:
    """The HTTP status of GET base+path; None when nothing answers."""
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


# Touches the backend store: answers 200 once the tables exist (MLflow migrates a new database at start).
STORE_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


def start_mlflow(paths: Paths, backend: str, port: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", str(workers),
           "--serve-artifacts", "--artifacts-destination", str(paths.artifacts)]  # fmt: skip
    env = dict(os.environ) | {"MLFLOW_BACKEND_STORE_URI": backend}  # not on the command line: it holds a password
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    # MLflow's job runner serves GenAI features only (LLM judges, trace roll-ups); these runs need none of it
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(paths.log, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=paths.root, start_new_session=True)  # fmt: skip


def wait_ready(exited: Callable[[], int | None], base: str, wait: float, log: Path) -> None:
    """Return once the server at `base` answers a request that reads its store; UserError when it exits
    (`exited()` gives its exit code) or `wait` seconds pass."""
    deadline = time.monotonic() + wait
    while answers(base, STORE_PROBE, timeout=5) != 200:
        code = exited()
        if code is not None:
            lines = [s for s in log.read_text(errors="replace").splitlines() if s.strip()]
            last = next((s for s in reversed(lines) if "Error" in s), lines[-1] if lines else "")
            raise UserError(f"mlflow server exited with code {code} before answering"
                            f"{f' ({last.strip()[:300]})' if last else ''}; its log: {log}")  # fmt: skip
        if time.monotonic() > deadline:
            raise UserError(f"mlflow server did not answer on {base} within {wait:g} s; its log: {log}")
        time.sleep(0.5)


def read_started(paths: Paths) -> dict:
    try:
        return json.loads(paths.started.read_text())
    except (OSError, ValueError):
        return {}


# ---- the commands ---------------------------------------------------------------------------------------


def start(port: int, workers: int, wait: float) -> str:
    paths = state_paths()
    base = f"http://{HOST}:{port}"
    started = read_started(paths)
    if started.get("pid") and alive(started["pid"]):
        if started.get("port") != port:
            raise UserError(f"a server started from {paths.root} is running on port {started.get('port')} "
                            f"(pid {started['pid']}); stop it first: make server-stop")  # fmt: skip
        if started.get("postgres"):  # the server outlived its database (stopped by hand, a reboot of it)
            user = cluster_user(paths)
            if not cluster_running(paths, user):
                start_cluster(paths, user)
        wait_ready(lambda: None if alive(started["pid"]) else -1, base, wait, paths.log)
        return f"already running: MLFLOW_TRACKING_URI={base}"
    check_port_free(port, taken="make ui? another server?", choose="choose another: make server PORT=...")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.artifacts.mkdir(exist_ok=True)
    external = os.environ.get("MLFLOW_BACKEND_URI", "")
    user, began_pg = None, False
    try:
        if external:
            backend = with_driver(external)
            check_database(backend)
        else:
            user = cluster_user(paths)
            if paths.pgdata.exists() and not paths.cluster.exists():
                raise UserError(f"{paths.pgdata} exists without {paths.cluster.name} (its password and port); "
                                f"remove {paths.root} to start afresh")  # fmt: skip
            cluster = json.loads(paths.cluster.read_text()) if paths.cluster.exists() and paths.pgdata.exists() \
                else init_cluster(paths, user)  # fmt: skip
            if not cluster_running(paths, user):
                start_cluster(paths, user)
                began_pg = True
            ensure_database(cluster)
            backend = cluster_uri(cluster)
        proc = start_mlflow(paths, backend, port, workers)
        try:
            wait_ready(proc.poll, base, wait, paths.log)
        except BaseException:
            stop_group(proc.pid)
            raise
    except BaseException:
        if began_pg:  # back to how it was: nothing left running by a start that failed
            with contextlib.suppress(UserError, OSError, subprocess.SubprocessError):
                stop_cluster(paths, user)
        raise
    write_private(paths.started, {"pid": proc.pid, "port": port, "postgres": not external})
    store = "MLFLOW_BACKEND_URI" if external else f"PostgreSQL in {paths.pgdata}"
    return f"MLFLOW_TRACKING_URI={base} (store: {store}; artifacts: {paths.artifacts}; log: {paths.log})"


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
    base = f"http://{HOST}:{started['port']}"
    code = answers(base, STORE_PROBE, timeout=10)
    if code == 200:
        return 0, f"running: MLFLOW_TRACKING_URI={base} (pid {started['pid']})"
    return 3, f"mlflow server pid {started['pid']} on {base}: its store does not answer (HTTP {code})"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="server processes (default: %(default)s)")
    p.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the server (default: %(default)s)")
    return p


def server_command(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 1 and 65535")
    if args.workers < 1 or args.wait <= 0:
        raise UserError("--workers and --wait must be positive")
    if args.command == "start":
        print(f"server: {start(args.port, args.workers, args.wait)}")
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
