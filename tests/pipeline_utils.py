"""Helpers for the end-to-end tests: a copy of this checkout in a temporary folder, its own git and DVC
state and MLflow store, running the real pipeline on a tiny configuration."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What a fresh clone would not have: the venv, caches, outputs of earlier runs, the MLflow store.
SKIP = {
    ".venv",
    ".git",
    "mlflow.db",
    "mlartifacts",
    "mlruns",
    ".pytest_cache",
    ".ruff_cache",
    "__pycache__",
    "data",
    "models",
    "plots",
    "metrics",
    "dvc.lock",
    ".gl",
    ".whl",
    "reports",
    ".mlflow-server",
}
SKIP_IN_DVC = {"cache", "tmp", "config.local"}

TINY = {
    "classifier": {"epochs": 1, "train_images": 2000, "batch_size": 100},
    "extractor": {"epochs": 1, "train_images": 2000, "batch_size": 100},
    "train": {
        "train_images": 2000,
        "steps": 120,
        "batch_size": 32,
        "log_every": 10,
        "image_every": 60,
        "checkpoint_every": 40,
        "fid_every": 0,
    },
    "numerics": {"threads": 1},  # one thread: two pytest workers share the two cores
    "sample": {"n": 600, "batch_size": 300},
    # the classifier's features only (the quick path); test_pipeline adds the other feature spaces
    "evaluate": {
        "n_reference": 600,
        "splits": 3,
        "batch_size": 300,
        "train_images": 3000,
        "spaces": ["classifier/penultimate"],
    },
}


# Another CPU kind, emulated on this one: every numeric library held below the path it would take here
# (ATen's kernels without SIMD, oneDNN's convolutions at SSE4.1, MKL's SSE4.2 branch where MKL honours it).
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "SSE4_2"}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.pop("MLFLOW_TRACKING_URI", None)
    e.pop("DVC_EXP_NAME", None)
    for name in OTHER_CPU:  # a test that emulates another CPU sets them itself
        e.pop(name, None)
    e.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess:
    p = subprocess.run(
        cmd, cwd=cwd, env=kw.pop("env", None) or env(), capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
        )
    return p


def free_port() -> int:
    """A localhost port nothing listens on (the OS picked it free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


def copy_tree(src: Path, dest: Path, skip: set[str]) -> Path:
    """Copy the folder `src` (e.g. a test's pipeline copy) to `dest`, leaving out its top-level entries named
    in `skip`."""
    shutil.copytree(
        src, dest, symlinks=True, ignore=lambda folder, names: {n for n in names if n in skip and folder == str(src)}
    )
    return dest


def copy_repo(dest: Path, overrides: dict | None = None) -> Path:
    """Copy this checkout (working tree, not history) to `dest`, apply params overrides, git-commit it."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = SKIP_IN_DVC if Path(folder).name == ".dvc" else set()
        if Path(folder) == ROOT:
            skip = SKIP
        return {n for n in names if n in skip or n == "__pycache__"}

    shutil.copytree(ROOT, dest, ignore=ignore)
    params_path = dest / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    deep_update(params, overrides if overrides is not None else TINY)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "test copy"], dest)
    return dest


def dvc(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 900, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, check=check, timeout=timeout, env={**env(), **(extra_env or {})})


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# Appended to a page before it is opened: once everything has loaded, the page writes what the browser
# made of it (tables, rows, images and whether each decoded) into a <pre> that --dump-dom prints.
RENDER_PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {tables: document.querySelectorAll('table').length, rows: document.querySelectorAll('tr').length,
    cells: [...document.querySelectorAll('td,th')].map(c => c.textContent),
    images: imgs.map(i => ({decoded: i.complete && i.naturalWidth > 0, width: i.naturalWidth,
                            shown: i.getBoundingClientRect().width}))};
  const pre = document.createElement('pre'); pre.id = 'render-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """The browser's path; skip without it, fail instead under CI (.ci/run installs it)."""
    import pytest

    if browser := chromium():
        return browser
    if os.environ.get("MNISTGAN_REQUIRE_CHROMIUM") == "1":
        pytest.fail("chromium is required (MNISTGAN_REQUIRE_CHROMIUM=1) but not installed")
    pytest.skip("chromium not installed (apt-get install chromium)")


def rendered_text(url: str, work: Path, wait_ms: int = 20000) -> set[str]:
    """The text nodes of `url` once headless Chromium has run its scripts for `wait_ms` of virtual time."""
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={work / 'chromium-profile'}", f"--virtual-time-budget={wait_ms}"]
    dom = run([require_chromium(), *flags, "--dump-dom", url], work, timeout=180).stdout
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
    return {html.unescape(s.strip()) for s in re.findall(r">([^<>]+)<", dom) if s.strip()}


def render_in_chromium(page: Path, work: Path) -> tuple[dict, Path]:
    """Open `page` in headless Chromium: what it rendered (see RENDER_PROBE) and a screenshot PNG."""
    browser = require_chromium()
    probed = work / "probed.html"
    probed.write_text(page.read_text().replace("</body>", RENDER_PROBE + "</body>"))
    profile, shot = work / "chromium-profile", work / "screenshot.png"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,2400"]
    dom = run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], work, timeout=120)
    run([browser, *flags, f"--screenshot={shot}", page.as_uri()], work, timeout=120)
    found = re.search(r'<pre id="render-probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no render probe in the dumped DOM:\n{dom.stdout[-2000:]}\n{dom.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1))), shot


# ---- `make server` (mnistgan.lab.server) in a temporary state folder ---------------------------------------


def require_postgres() -> None:
    """Skip when PostgreSQL's binaries are missing; fail instead under CI (.ci/run installs them)."""
    import pytest

    from mnistgan.lab import postgres

    try:
        postgres.pg_bin("initdb"), postgres.pg_bin("pg_ctl")
    except Exception as e:
        if os.environ.get("MNISTGAN_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"MNISTGAN_REQUIRE_POSTGRES=1 but {e}")
        pytest.skip(f"PostgreSQL is not installed ({e})")


def server_state_dir() -> Path:
    """A state folder the PostgreSQL user can enter (pytest's own temp folders are private to root)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mnistgan-server-"))
    folder.chmod(0o755)
    return folder


def server_cmd(
    command: str, state: Path, port: int | None = None, extra_env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`python -m mnistgan.lab.server COMMAND` with its state in `state`, one worker (two cores for everything)."""
    args = [str(BIN / "python"), "-m", "mnistgan.lab.server", command]
    if command == "start":
        args += ["--port", str(port), "--workers", "1"]
    e = env() | {"MNISTGAN_SERVER_DIR": str(state)}
    e.pop("MLFLOW_BACKEND_URI", None)  # the local cluster unless the test names a store
    e |= extra_env or {}
    return run(args, ROOT, check=check, timeout=300, env=e)
