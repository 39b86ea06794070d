"""A temporary clone of a commit to rerun its pipeline in, with its own DVC cache and a throwaway MLflow store:
git and dvc helpers shared by `make verify` (mnistgan.lab.verify) and `make spread` (mnistgan.lab.spread)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from mnistgan.errors import UserError

# Git variables a hook or a wrapper may set; they would point the clone's git commands at the user's repo.
GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR")


def git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in GIT_LOCATION_VARS}


def git(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("git is not installed (not found on PATH)") from None
    if check and p.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def commit(rev: str, cwd: Path) -> str | None:
    p = git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd, check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def dvc_bin() -> str:
    # The venv's dvc when this runs from one (make verify), else whichever is on PATH.
    here = Path(sys.executable).parent / "dvc"
    found = str(here) if here.exists() else shutil.which("dvc")
    if not found:
        raise UserError("dvc is not installed (not next to this python, not on PATH); run `make venv`")
    return found


def stream(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run `cmd`, copying its output line by line to stderr (stdout is kept for the verdict lines)."""
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    ) as p:
        assert p.stdout is not None
        for line in p.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
    return p.returncode


def clone_commit(root: Path, head: str, dest: Path) -> None:
    git(["clone", "--quiet", "--no-checkout", str(root), str(dest)], root)
    if commit(head, dest) is None:  # a detached HEAD on no branch: clone copies branches and tags only
        git(["fetch", "--quiet", "origin", head], dest)
    git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", head], dest)


def run_env(tmp: Path) -> dict[str, str]:
    env = git_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stages call `python`
    env.pop("DVC_EXP_NAME", None)  # would name the throwaway MLflow run after some experiment
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),  # DVC's per-repo state and index, normally /var/tmp
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",  # progress lines as they happen, not when a stage's buffer fills
        }
    )
    return env


def pin_cache(clone: Path) -> None:
    """Keep the clone's DVC cache inside it: a cache.dir in the user's global or system DVC config would
    otherwise send the rerun's outputs into a shared cache. config.local outranks both."""
    (clone / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {clone / '.dvc' / 'cache'}\n")


def repo_root(cwd: Path) -> tuple[Path, str]:
    """The repository around `cwd` and its HEAD commit; bad input (no repository, no commit) is a UserError."""
    top = git(["rev-parse", "--show-toplevel"], cwd, check=False)
    if top.returncode != 0:
        raise UserError(f"{cwd} is not inside a git repository")
    root = Path(top.stdout.strip())
    head = commit("HEAD", root)
    if head is None:
        raise UserError(f"{root} has no commit yet: commit dvc.yaml, params.yaml and dvc.lock first")
    return root, head


def clone_json(path: Path, required: bool = False) -> Any:
    """A JSON file of a clone; when missing or not JSON, None, or (required) one line naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        if required:
            raise UserError(f"{path.name}: cannot read it ({e}); did the pipeline run?") from None
        return None


INTERPOLATION = re.compile(r"\$\{\s*([^}\s]+)\s*\}")
OUT_SECTIONS = ("outs", "metrics", "plots")
# `${paths.samples}`: DVC's interpolation syntax in dvc.yaml, looked up in params.yaml.
VARIES = "varies"  # the dvc.yaml output annotation `meta: {varies: "<why it differs run to run>"}`
# --- what a clone's dvc.yaml declares -----------------------------------------------------------------------------


def _lookup(params: dict[str, Any], key: str) -> str:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"dvc.yaml: ${{{key}}} is not a key of params.yaml")
        node = node[part]
    return str(node)


def resolve(text: str, params: dict[str, Any]) -> str:
    """`text` with every `${a.b}` replaced by params.yaml's value, as DVC does for dvc.yaml."""
    return INTERPOLATION.sub(lambda m: _lookup(params, m.group(1)), text)


def read_yaml(path: Path) -> Any:
    """A YAML file, or one line naming it and what is wrong."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def varying_outputs(root: Path) -> dict[str, str]:
    """The outputs dvc.yaml declares as differing between two runs of the same params, path -> why.

    An output is declared with DVC's output annotation, e.g. `meta: {varies: "wall-clock seconds"}` under
    its entry in a stage's outs, metrics or plots; `${...}` in its path is resolved from params.yaml."""
    dvc_yaml = read_yaml(root / "dvc.yaml") or {}
    params_path = root / "params.yaml"
    params = (read_yaml(params_path) or {}) if params_path.exists() else {}
    found: dict[str, str] = {}
    for stage in (dvc_yaml.get("stages") or {}).values():
        for section in OUT_SECTIONS:
            for entry in stage.get(section) or []:
                if not isinstance(entry, dict):
                    continue  # a bare path: no annotation
                for path, options in entry.items():
                    meta = (options or {}).get("meta")
                    if isinstance(meta, dict) and VARIES in meta:
                        found[resolve(str(path), params)] = str(meta[VARIES])
    return found
