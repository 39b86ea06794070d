"""The state folder of `make server` (mnistgan.lab.server) and its PostgreSQL cluster: made with `initdb` the
first time, started and stopped with `pg_ctl` on 127.0.0.1 (a free port chosen once, a generated password kept in
cluster.json, mode 600), with the databases the server needs (mlflow; mlflow_auth for the logins)."""

from __future__ import annotations

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
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mnistgan import tracking
from mnistgan.errors import UserError
from mnistgan.lab.ui import HOST

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
    raise UserError(
        f"PostgreSQL's {name} not found (install Debian's postgresql package, or set "
        "MLFLOW_BACKEND_URI to a database you already have)"
    )


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
        ok = (
            (st.st_mode & stat.S_IXOTH)
            or (st.st_uid == user.pw_uid and st.st_mode & stat.S_IXUSR)
            or (st.st_gid in groups and st.st_mode & stat.S_IXGRP)
        )
        if not ok:
            raise UserError(
                f"PostgreSQL runs as user {user.pw_name}, who cannot enter {parent}; choose a state "
                "folder it can reach with MNISTGAN_SERVER_DIR"
            )


def as_pg(cmd: list[str], user: pwd.struct_passwd | None, **kw) -> subprocess.CompletedProcess:
    """Run a PostgreSQL command as `user` (root may switch; others run as themselves)."""
    if user is not None:
        kw |= {
            "user": user.pw_uid,
            "group": user.pw_gid,
            "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", ""), "HOME": "/", "LC_ALL": "C"},
        }
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
        p = as_pg(
            [
                pg_bin("initdb"),
                "-D",
                str(paths.pgdata),
                "-U",
                DB_USER,
                f"--pwfile={f.name}",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
            ],
            user,
        )
        os.unlink(f.name)
        if p.returncode != 0:
            raise _pg_error("initdb", p)
        # TCP on the loopback only; no Unix socket (its default folder, /var/run/postgresql, may not exist)
        with open(paths.pgdata / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n# mnistgan server\nlisten_addresses = '{HOST}'\nport = {cluster['port']}\n"
                "unix_socket_directories = ''\n"
            )
        write_private(paths.cluster, cluster)
    except BaseException:
        shutil.rmtree(paths.pgdata, ignore_errors=True)  # nothing half-made: the next start begins afresh
        if f is not None:
            with contextlib.suppress(OSError):
                os.unlink(f.name)
        raise
    return cluster


def write_private(path: Path, data: dict | str) -> None:
    """JSON (or text) readable by this user only, written whole (a temp file renamed over it)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
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
    p = as_pg(
        [pg_bin("pg_ctl"), "-D", str(paths.pgdata), "-l", str(paths.pglog), "-w", "-t", "60", "start"],
        user,
        start_new_session=True,
    )
    if p.returncode != 0:
        raise _pg_error("pg_ctl start", p, paths.pglog)


def stop_cluster(paths: Paths, user: pwd.struct_passwd | None) -> None:
    p = as_pg([pg_bin("pg_ctl"), "-D", str(paths.pgdata), "-m", "fast", "-w", "-t", "60", "stop"], user)
    if p.returncode != 0 and cluster_running(paths, user):
        raise _pg_error("pg_ctl stop", p)


def cluster_uri(cluster: dict, db: str = DB_NAME) -> str:
    return f"postgresql+psycopg2://{DB_USER}:{cluster['password']}@{HOST}:{cluster['port']}/{db}"


def ensure_database(cluster: dict, name: str = DB_NAME) -> None:
    """CREATE DATABASE `name` once (initdb makes only `postgres`): mlflow, and mlflow_auth for the logins."""
    import psycopg2

    conn = psycopg2.connect(
        host=HOST,
        port=cluster["port"],
        user=DB_USER,
        password=cluster["password"],
        dbname="postgres",
        connect_timeout=10,
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {name}")
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
