"""`mnistgan verify`: rerun the whole pipeline of the commit HEAD from scratch and check that every output
has the hash the committed dvc.lock records.

The rerun happens in a temporary `git clone` of HEAD with its own DVC cache and a throwaway MLflow store,
so the user's working tree, DVC cache and MLflow store are left as they were (uncommitted changes are not
verified: a warning says so). There `dvc repro --force` runs every stage with this venv's `python` first
on PATH, its output streamed to stderr, and the dvc.lock it writes (DVC recomputes every output's md5,
directories included) is compared output by output with the dvc.lock of the commit. Outputs that dvc.yaml
declares as differing between two runs of the same params (`meta: {varies: "why"}`: wall-clock times, the
MLflow run id) are skipped.

stdout gets one line per output, then a verdict line; exit 0 when every compared output agrees, 1 when
one differs, is missing or the rerun fails, 2 on bad input (not a git repository, no dvc.lock committed,
an unknown --base). reports/verify.md gets the same table and `dvc metrics diff BASE` / `dvc params diff
BASE` of the rerun (appended to $GITHUB_STEP_SUMMARY too when set), and reports/verify/samples.png the
reproduced sample grid.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnistgan.cli import OneLineParser, run_command
from mnistgan.errors import UserError

PROG = "mnistgan verify"
DEFAULT_BASE = "HEAD~1"
VARIES = "varies"  # the dvc.yaml output annotation `meta: {varies: "<why it differs run to run>"}`
OUT_SECTIONS = ("outs", "metrics", "plots")
REPORT = Path("reports/verify.md")
ARTIFACTS = Path("reports/verify")
SAMPLES_KEY = "samples_png"  # params.yaml paths key of the sample grid copied next to the report
# `${paths.samples}`: DVC's interpolation syntax in dvc.yaml, looked up in params.yaml.
INTERPOLATION = re.compile(r"\$\{\s*([^}\s]+)\s*\}")
# A revision counted back from HEAD (HEAD~1, HEAD^^): when the history is too short for it, the report
# says so instead of failing, so a one-commit repository can still be verified.
RELATIVE_TO_HEAD = re.compile(r"HEAD([~^]\d*)+")
# Git variables a hook or a wrapper may set; they would point the clone's git commands at the user's repo.
GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR")


# --- what dvc.yaml declares -----------------------------------------------------------------------------


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


def _read_yaml(path: Path) -> Any:
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
    dvc_yaml = _read_yaml(root / "dvc.yaml") or {}
    params_path = root / "params.yaml"
    params = (_read_yaml(params_path) or {}) if params_path.exists() else {}
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


# --- comparing two dvc.lock files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One output's verdict: `same`, `DIFFERS`, `missing` or `skipped`."""

    status: str
    path: str
    committed: str | None = None  # md5 in the committed dvc.lock (a directory's ends in .dir)
    reproduced: str | None = None  # md5 in the dvc.lock of the rerun
    note: str = ""  # why skipped, or which lock lacks it

    def line(self) -> str:
        """The output's line on stdout: the status padded to 9 columns, then the path."""
        head = f"{self.status:<9}{self.path}"
        if self.status == "DIFFERS":
            return f"{head} (committed {_short(self.committed)}, reproduced {_short(self.reproduced)})"
        if self.status == "skipped":
            return f"{head} (varies: {self.note})"
        if self.status == "missing":
            return f"{head} ({self.note})"
        return head

    @property
    def failed(self) -> bool:
        return self.status in ("DIFFERS", "missing")


def _short(md5: str | None) -> str:
    return (md5 or "-")[:12]


def lock_outputs(lock: dict[str, Any]) -> dict[str, str | None]:
    """Every stage's outputs in a parsed dvc.lock, path -> md5 (None when the lock records none)."""
    found: dict[str, str | None] = {}
    for stage in ((lock or {}).get("stages") or {}).values():
        for out in stage.get("outs") or []:
            found[str(out["path"])] = out.get("md5")
    return found


def compare_locks(committed: dict[str, Any], reproduced: dict[str, Any], varying: dict[str, str]) -> list[Row]:
    """One Row per output of either lock, sorted by path: the md5s of the two parsed dvc.lock files compared,
    the outputs in `varying` (path -> why) skipped."""
    old, new = lock_outputs(committed), lock_outputs(reproduced)
    rows = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if path in varying:
            rows.append(Row("skipped", path, a, b, varying[path]))
        elif a is None:
            rows.append(Row("missing", path, a, b, "not in the committed dvc.lock"))
        elif b is None:
            rows.append(Row("missing", path, a, b, "not in the reproduced dvc.lock"))
        else:
            rows.append(Row("same" if a == b else "DIFFERS", path, a, b))
    return rows


def stale_stages(committed: dict[str, Any], reproduced: dict[str, Any]) -> dict[str, list[str]]:
    """Stages whose committed dvc.lock records another command, other params or other source files than
    the rerun found in the commit, stage -> what differs: a dvc.lock not updated after a change, so those
    stages' outputs were never expected to match. Dependencies that are outputs of a stage are left out:
    they differ whenever an upstream output does, which the output rows already say."""
    outputs = set(lock_outputs(reproduced)) | set(lock_outputs(committed))
    old_stages = (committed or {}).get("stages") or {}
    found: dict[str, list[str]] = {}
    for name, new in ((reproduced or {}).get("stages") or {}).items():
        old = old_stages.get(name)
        if old is None:
            continue  # its outputs are reported missing from the committed lock
        what = ["cmd"] if old.get("cmd") != new.get("cmd") else []
        old_deps = {d["path"]: d.get("md5") for d in old.get("deps") or [] if d["path"] not in outputs}
        new_deps = {d["path"]: d.get("md5") for d in new.get("deps") or [] if d["path"] not in outputs}
        what += sorted(p for p in set(old_deps) | set(new_deps) if old_deps.get(p) != new_deps.get(p))
        old_params = {k: v for f in (old.get("params") or {}).values() for k, v in f.items()}
        new_params = {k: v for f in (new.get("params") or {}).values() for k, v in f.items()}
        what += sorted(
            f"param {k}" for k in set(old_params) | set(new_params) if old_params.get(k) != new_params.get(k)
        )
        if what:
            found[name] = what
    return found


# --- git and dvc ---------------------------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in GIT_LOCATION_VARS}


def _git(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, env=_git_env(), capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("git is not installed (not found on PATH)") from None
    if check and p.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def _commit(rev: str, cwd: Path) -> str | None:
    p = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd, check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def _dvc() -> str:
    # The venv's dvc when this runs from one (make verify), else whichever is on PATH.
    here = Path(sys.executable).parent / "dvc"
    found = str(here) if here.exists() else shutil.which("dvc")
    if not found:
        raise UserError("dvc is not installed (not next to this python, not on PATH); run `make venv`")
    return found


def _stream(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run `cmd`, copying its output line by line to stderr (stdout is kept for the verdict lines)."""
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", bufsize=1) as p:  # fmt: skip
        assert p.stdout is not None
        for line in p.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
    return p.returncode


def _clone(root: Path, head: str, dest: Path) -> None:
    _git(["clone", "--quiet", "--no-checkout", str(root), str(dest)], root)
    if _commit(head, dest) is None:  # a detached HEAD on no branch: clone copies branches and tags only
        _git(["fetch", "--quiet", "origin", head], dest)
    _git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", head], dest)


def _run_env(tmp: Path) -> dict[str, str]:
    env = _git_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stages call `python`
    env.pop("DVC_EXP_NAME", None)  # would name the throwaway MLflow run after some experiment
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),  # DVC's per-repo state and index, normally /var/tmp
        "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",  # progress lines as they happen, not when a stage's buffer fills
    })  # fmt: skip
    return env


def _dvc_markdown(dvc: str, args: list[str], clone: Path, env: dict[str, str], rev: str, name: str) -> str:
    """`dvc <args>` (a diff against the commit `rev`) run in the clone: its Markdown table, the column of `rev`
    titled `name` (the revision as the user wrote it) and DVC's `workspace` column `rerun`."""
    p = subprocess.run([dvc, *args], cwd=clone, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()[-1]
        return f"`dvc {' '.join(args)}` failed (exit {p.returncode}): {last}"
    lines = p.stdout.strip().splitlines()
    if len(lines) <= 2:  # nothing, or a header and its rule without a row: no difference
        return "No differences."
    lines[0] = lines[0].replace(rev, name).replace("workspace", "rerun")
    return "\n".join(lines)


# --- the report ------------------------------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def verdict(rows: list[Row]) -> str:
    """The last line on stdout."""
    failed = [r for r in rows if r.failed]
    skipped = sum(r.status == "skipped" for r in rows)
    if failed:
        names = ", ".join(r.path if r.status == "DIFFERS" else f"{r.path} (missing)" for r in failed)
        n = len(failed)
        return f"verify: FAILED: {n} output{'s' if n > 1 else ''} not reproduced as committed in dvc.lock: {names}"
    same = sum(r.status == "same" for r in rows)
    return f"verify: OK: all {same} compared outputs match the committed dvc.lock ({skipped} skipped: they vary)"


def markdown(head: str, rows: list[Row], stale: dict[str, list[str]], seconds: float, against: str) -> str:
    """reports/verify.md: the verdict, the per-output table, stale stages, then `against` (the diffs)."""
    failed = [r for r in rows if r.failed]
    result = (f"**{len(failed)} not reproduced**: " + ", ".join(f"`{r.path}`" for r in failed)) if failed else (
        "**every compared output reproduced**")  # fmt: skip
    lines = [
        "# Reproducibility check",
        "",
        f"Commit `{head[:12]}` rerun from scratch (`dvc repro --force` in a fresh clone, {_minutes(seconds)}); "
        f"each output's md5 compared with the committed `dvc.lock`: {result}.",
        "",
        "| output | result | committed md5 | reproduced md5 |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        status = {"DIFFERS": "**DIFFERS**", "skipped": f"skipped (varies: {r.note})",
                  "missing": f"**missing** ({r.note})"}.get(r.status, r.status)  # fmt: skip
        lines.append(f"| `{r.path}` | {status} | `{_short(r.committed)}` | `{_short(r.reproduced)}` |")
    if stale:
        lines += ["", "The committed `dvc.lock` is stale for these stages (it records other inputs than the "
                  "commit holds: run `dvc repro` and commit `dvc.lock`):", ""]  # fmt: skip
        lines += [f"- `{name}`: {', '.join(what)}" for name, what in stale.items()]
    return "\n".join(lines) + "\n\n" + against.strip() + "\n"


def _against(base: str, base_sha: str | None, clone: Path, dvc: str, env: dict[str, str]) -> str:
    if base_sha is None or _commit(base_sha, clone) is None:
        return (f"## Against {base}\n\nThe clone has no revision `{base}` (the history is too short, or the "
                "commit is on no branch): no metrics or params diff.")  # fmt: skip
    title = f"`{base}` (`{base_sha[:12]}`)"
    metrics = _dvc_markdown(dvc, ["metrics", "diff", base_sha, "--md"], clone, env, base_sha, base)
    params = _dvc_markdown(dvc, ["params", "diff", base_sha, "--md"], clone, env, base_sha, base)
    return (f"## Metrics: {title} against the rerun\n\n`dvc metrics diff {base} --md`:\n\n{metrics}\n\n"
            f"## Params: {title} against the rerun\n\n`dvc params diff {base} --md`:\n\n{params}")  # fmt: skip


def _publish(root: Path, text: str, clone: Path) -> None:
    """reports/verify.md, the GitHub Actions job summary and the reproduced sample grid."""
    report = root / REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(text)
    params = _read_yaml(clone / "params.yaml") or {}
    grid = clone / str((params.get("paths") or {}).get(SAMPLES_KEY, "plots/samples.png"))
    if grid.is_file():
        (root / ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, root / ARTIFACTS / grid.name)
    print(f"verify: wrote {REPORT}" + (f" and {ARTIFACTS / grid.name}" if grid.is_file() else ""), file=sys.stderr)


# --- the command -------------------------------------------------------------------------------------------


def verify(cwd: Path, base: str = DEFAULT_BASE, keep: bool = False) -> int:
    """Check the repository around `cwd` (see the module docstring); the exit code."""
    top = _git(["rev-parse", "--show-toplevel"], cwd, check=False)
    if top.returncode != 0:
        raise UserError(f"{cwd} is not inside a git repository")
    root = Path(top.stdout.strip())
    head = _commit("HEAD", root)
    if head is None:
        raise UserError(f"{root} has no commit yet: commit dvc.yaml, params.yaml and dvc.lock first")
    for name in ("dvc.yaml", "dvc.lock"):
        if _git(["cat-file", "-e", f"{head}:{name}"], root, check=False).returncode != 0:
            raise UserError(f"no {name} committed at HEAD ({head[:12]}): run `dvc repro` and commit {name}")
    base_sha = _commit(base, root)
    if base_sha is None and not RELATIVE_TO_HEAD.fullmatch(base):
        raise UserError(f"--base {base}: unknown revision")
    if _git(["status", "--porcelain", "--untracked-files=no"], root).stdout.strip():
        print(f"verify: warning: uncommitted changes to tracked files are not verified; this reruns the commit "
              f"HEAD ({head[:12]})", file=sys.stderr)  # fmt: skip
    dvc = _dvc()

    tmp = Path(tempfile.mkdtemp(prefix="mnistgan-verify-"))
    clone = tmp / "repo"
    try:
        _clone(root, head, clone)
        committed = _read_yaml(clone / "dvc.lock") or {}  # as committed: the rerun overwrites it
        varying = varying_outputs(clone)
        # Pin the clone's DVC cache inside it: a cache.dir in the user's global or system DVC config would
        # otherwise send the rerun's outputs into a shared cache. config.local outranks both.
        (clone / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {clone / '.dvc' / 'cache'}\n")
        env = _run_env(tmp)
        # --force: the cache: false outputs (data/params.ok, metrics, plots) are committed to git, so a plain
        # `dvc repro` would skip a stage whose outputs are all such files and compare them with themselves.
        print(f"verify: rerunning the pipeline of {head[:12]} from scratch in {clone} (dvc repro --force)",
              file=sys.stderr)  # fmt: skip
        start = time.monotonic()
        code = _stream([dvc, "repro", "--force"], clone, env)
        seconds = time.monotonic() - start
        if code != 0:
            print(f"verify: FAILED: dvc repro exited {code} in the clone (its output is above)")
            _publish(root, f"# Reproducibility check\n\nCommit `{head[:12]}`: `dvc repro --force` in a fresh "
                     f"clone **failed** (exit {code}) after {_minutes(seconds)}.\n", clone)  # fmt: skip
            return 1
        reproduced = _read_yaml(clone / "dvc.lock") or {}
        rows = compare_locks(committed, reproduced, varying)
        stale = stale_stages(committed, reproduced)
        for name, what in stale.items():
            print(f"verify: warning: the committed dvc.lock is stale for stage {name} ({', '.join(what)} differ "
                  "from the commit's): run `dvc repro` and commit dvc.lock", file=sys.stderr)  # fmt: skip
        for row in rows:
            print(row.line())
        _publish(root, markdown(head, rows, stale, seconds, _against(base, base_sha, clone, dvc, env)), clone)
        print(verdict(rows))
        return 1 if any(r.failed for r in rows) else 0
    finally:
        if keep:
            print(f"verify: kept the clone and its MLflow store in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog=PROG,
        description="Rerun the whole pipeline of HEAD from scratch in a temporary clone and compare every "
        "output's md5 with the committed dvc.lock.",
    )
    parser.add_argument(
        "--base", default=DEFAULT_BASE, help="revision the report's metrics and params diff against (%(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone (its path goes to stderr)")
    # Ctrl-C: the clone is already removed (or kept) by verify's clean-up
    return run_command(parser, lambda args: verify(Path.cwd(), args.base, args.keep), argv)


if __name__ == "__main__":
    raise SystemExit(main())
