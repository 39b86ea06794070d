"""Whether the tracking store answers, and takes this machine's login: checked in seconds before a stage or
command starts work, so an unreachable server or a refused login is one line, not minutes of MLflow's
retries and a traceback. No mlflow import here: the checks are plain HTTP."""

from __future__ import annotations

import base64
import configparser
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mnistgan.errors import TrackingError


def login() -> tuple[str, str] | None:
    """The tracking server login, read the MLflow way: MLFLOW_TRACKING_USERNAME/PASSWORD, else the [mlflow]
    section of ~/.mlflow/credentials (mlflow_tracking_username, mlflow_tracking_password); None without one."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is None:
        creds = configparser.ConfigParser()
        creds.read(Path.home() / ".mlflow" / "credentials")
        user = creds.get("mlflow", "mlflow_tracking_username", fallback=None)
        password = creds.get("mlflow", "mlflow_tracking_password", fallback=password)
    return (user, password or "") if user else None


def basic_auth(user: str, password: str) -> str:
    """The HTTP Basic `Authorization` value of a login (clients, `make server`'s probes, its admin)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _server_request(url: str) -> tuple[urllib.request.Request, Any]:
    """A GET of `url` with the login (HTTP Basic) and the TLS settings MLflow's client uses."""
    headers = {}
    if creds := login():
        headers["Authorization"] = basic_auth(*creds)
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return urllib.request.Request(url, headers=headers), context


def refused(uri: str, code: int | str, doing: str) -> TrackingError:
    """One line for a login the server refused (401) or an action it forbids this login (403)."""
    creds = login()
    who = f"user {creds[0]!r}" if creds else "no login (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
    what = "refused the login of" if str(code) in ("401", "UNAUTHENTICATED") else "does not allow"
    return TrackingError(f"tracking server {uri} {what} {who} ({code}) {doing}")


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of client retries) when the store cannot be reached, or refuses the login."""
    if uri.startswith(("http://", "https://")):
        try:
            request, context = _server_request(uri.rstrip("/") + "/health")
            with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
                if r.status != 200:
                    raise TrackingError(f"tracking server {uri} answered {r.status} on /health")
        except urllib.error.HTTPError as e:
            raise TrackingError(f"tracking server {uri} answered {e.code} on /health ({e.reason})") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"tracking server {uri} is unreachable ({reason})") from None
        request, context = _server_request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
        try:  # a server whose database is down answers /health, then 503 to all else (MLflow retries for minutes)
            urllib.request.urlopen(request, timeout=timeout, context=context).close()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise refused(uri, e.code, "reading experiments") from None
            if e.code >= 500:
                raise TrackingError(f"tracking server {uri} cannot reach its backend store (HTTP {e.code})") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise TrackingError(f"tracking server {uri} does not answer ({getattr(e, 'reason', e)})") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking store folder {folder} does not exist or is not writable")
