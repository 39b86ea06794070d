"""The team's logins on `make server` (mnistgan.lab.server): MLflow's basic-auth app, its admin, and
`mnistgan server user add|remove|list`.

A server on any address other than the loopback runs `mlflow server --app-name basic-auth`:
- the admin's password and the Flask secret key are generated on first start and kept in the state folder's
  auth.json (mode 600, beside the cluster's password);
- the user database is a database of its own (`mlflow_auth`) in the same PostgreSQL (or, with a team's own
  MLFLOW_BACKEND_URI, MLFLOW_AUTH_DATABASE_URI, else a SQLite file in the state folder);
- a login without a grant may READ every experiment, run and model (DEFAULT_PERMISSION): a team shares what it
  finds. A reader is just that; an editor is also granted EDIT on the project's experiment and registered
  model, so it can run experiments and register versions. Nobody else writes to them. (MLflow lets any login
  make a new experiment or model of its own, which it then manages; the team's are not touched by that.)
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mnistgan.descriptions import REGISTERED_MODEL
from mnistgan.errors import UserError
from mnistgan.store import basic_auth

ADMIN = "admin"
AUTH_DB = "mlflow_auth"
ROLES = ("reader", "editor")
DEFAULT_PERMISSION = "READ"  # what a login may do where it has no grant
EDITOR_PERMISSION = "EDIT"  # an editor's grant on the project's experiment and registered model
API = "/api/{version}.0/mlflow"  # MLflow's REST root; the permission calls are version 3


def auth_settings(state: Path, write_private: Any) -> dict[str, str]:
    """The admin's password and the Flask secret key: made on first call, read from `state`/auth.json after."""
    path = state / "auth.json"
    if path.exists():
        return json.loads(path.read_text())
    # MLflow wants an admin password of at least 12 characters; token_urlsafe(18) gives 24
    made = {"admin": ADMIN, "password": secrets.token_urlsafe(18), "secret_key": secrets.token_hex(32)}
    write_private(path, made)
    return made


def auth_config(state: Path, database_uri: str, write_private: Any) -> Path:
    """The basic-auth app's ini file (mode 600: its database URI may hold a password)."""
    path = state / "basic_auth.ini"
    text = "\n".join([
        "[mlflow]",
        f"default_permission = {DEFAULT_PERMISSION}",
        f"database_uri = {database_uri}",
        f"admin_username = {ADMIN}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
    ])  # fmt: skip
    write_private(path, text + "\n")
    return path


def server_env(state: Path, database_uri: str, write_private: Any) -> dict[str, str]:
    """What `mlflow server --app-name basic-auth` reads from its environment."""
    settings = auth_settings(state, write_private)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(state, database_uri, write_private)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": settings["password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": settings["secret_key"],
    }


# ---- the admin's calls to the server ------------------------------------------------------------------------


class Admin:
    """REST calls to the server at `base` as its admin (HTTP Basic); `cafile` checks a self-signed certificate."""

    def __init__(self, base: str, settings: dict[str, str], cafile: str | None = None):
        self.base = base.rstrip("/")
        self.headers = {
            "Authorization": basic_auth(settings["admin"], settings["password"]),
            "Content-Type": "application/json",
        }
        self.context = ssl.create_default_context(cafile=cafile) if base.startswith("https") else None

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
        version = 3 if path.startswith("users/permissions/") else 2
        url = f"{self.base}{API.format(version=version)}/{path}" + (
            f"?{urllib.parse.urlencode(query)}" if query else ""
        )
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as r:
                text = r.read().decode() or "{}"
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("message", detail)
            raise UserError(f"{self.base}: {method} {path} refused ({e.code}: {str(detail).strip()[:200]})") from None
        except (urllib.error.URLError, OSError) as e:
            raise UserError(
                f"{self.base}: does not answer ({getattr(e, 'reason', e)}); is `make server` running?"
            ) from None
        return json.loads(text)

    def exists(self, path: str, query: dict) -> dict | None:
        try:
            return self.call("GET", path, query=query)
        except UserError as e:
            if "(404" in str(e) or "RESOURCE_DOES_NOT_EXIST" in str(e):
                return None
            raise

    def experiment_id(self, name: str) -> str:
        """The experiment's id, made (by the admin) when it does not exist yet."""
        found = self.exists("experiments/get-by-name", {"experiment_name": name})
        if found:
            return found["experiment"]["experiment_id"]
        return self.call("POST", "experiments/create", {"name": name})["experiment_id"]

    def ensure_model(self, name: str) -> None:
        if not self.exists("registered-models/get", {"name": name}):
            self.call("POST", "registered-models/create", {"name": name})

    def grant(self, user: str, resource_type: str, resource_id: str, permission: str) -> None:
        body = {"username": user, "resource_type": resource_type, "resource_id": resource_id, "permission": permission}
        self.call("POST", "users/permissions/grant", body)

    def users(self) -> list[dict]:
        return self.call("GET", "users/list").get("users", [])


def add_user(admin: Admin, name: str, role: str, experiment: str) -> str:
    """Create the login `name` with a generated password (returned); an editor gets EDIT on `experiment` and
    the registered model."""
    if role not in ROLES:
        raise UserError(f"--role {role!r}: unknown; allowed: {', '.join(ROLES)}")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"user name {name!r}: use letters, digits, '-', '_' and '.'")
    if name == ADMIN or any(u.get("username") == name for u in admin.users()):
        raise UserError(f"user {name!r} exists already; `mnistgan server user remove {name}` first")
    password = secrets.token_urlsafe(18)
    admin.call("POST", "users/create", {"username": name, "password": password})
    if role == "editor":
        admin.grant(name, "experiment", admin.experiment_id(experiment), EDITOR_PERMISSION)
        admin.ensure_model(REGISTERED_MODEL)
        admin.grant(name, "registered_model", REGISTERED_MODEL, EDITOR_PERMISSION)
    return password


def remove_user(admin: Admin, name: str) -> None:
    if name == ADMIN:
        raise UserError(f"{ADMIN!r} is the server's own admin and stays")
    if not any(u.get("username") == name for u in admin.users()):
        raise UserError(f"no user {name!r}; `mnistgan server user list` shows them")
    admin.call("DELETE", "users/delete", {"username": name})


def list_users(admin: Admin, experiment: str) -> list[str]:
    """One line per login: its name and role (admin, editor or reader)."""
    lines = []
    found = admin.exists("experiments/get-by-name", {"experiment_name": experiment})  # once, not per user
    experiment_id = found["experiment"]["experiment_id"] if found else "0"
    for user in sorted(admin.users(), key=lambda u: u.get("username", "")):
        name = user.get("username", "?")
        if user.get("is_admin"):
            role = "admin"
        else:
            query = {"username": name, "resource_type": "experiment", "resource_id": experiment_id}
            permission = admin.call("GET", "users/permissions/get", query=query).get("permission", "")
            role = "editor" if permission in ("EDIT", "MANAGE") else "reader"
        lines.append(f"{name} {role}")
    return lines
