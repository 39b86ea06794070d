"""`mnistgan verify` (`make verify`): rerun the whole pipeline of the commit HEAD from scratch and say how far
it reproduced: exactly, within noise, or not.

The rerun happens in a temporary `git clone` of HEAD with its own DVC cache and a throwaway MLflow store,
so the user's working tree, DVC cache and MLflow store are left as they were (uncommitted changes are not
verified: a warning says so). There `dvc repro --force` runs every stage with this venv's `python` first
on PATH, its output streamed to stderr, and the dvc.lock it writes (DVC recomputes every output's md5,
directories included) is compared output by output with the dvc.lock of the commit. Outputs that dvc.yaml
declares as differing between two runs of the same params (`meta: {varies: "why"}`: wall-clock times, the
MLflow run id, the platform fingerprint) are skipped.

Levels: **exact** when every compared output has the committed md5 (the platform computed the same bytes:
portable numerics on another x86-64 CPU, or the same CPU kind). Otherwise the rerun is a new draw of the
same experiment, like another seed, and it is **within noise** when every headline score of the rerun and
of the commit lies within the committed seed spread's range (metrics/spread.json, mnistgan.lab.noise);
**NOT reproduced** names each score outside. `--exact` demands bytes.

stdout gets the two platform fingerprints side by side, one line per output, one per score judged, then
the verdict line, which names the level; exit 0 for exact and within noise, 1 otherwise, 2 on bad input
(not a git repository, no dvc.lock committed, an unknown --base). reports/verify.md gets the same tables and
`dvc metrics diff BASE` / `dvc params diff BASE` of the rerun (appended to $GITHUB_STEP_SUMMARY too when
set), and reports/verify/samples.png the reproduced sample grid.
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

from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import load_params
from mnistgan.errors import UserError
from mnistgan.lab import markdown as md
from mnistgan.lab import noise
from mnistgan.lab.clone import (
    clone_commit,
    clone_json,
    commit,
    dvc_bin,
    git,
    pin_cache,
    read_yaml,
    repo_root,
    run_env,
    stream,
    varying_outputs,
)

PROG = "mnistgan verify"
DEFAULT_BASE = "HEAD~1"
REPORT = Path("reports/verify.md")
ARTIFACTS = Path("reports/verify")
SAMPLES_KEY = "samples_png"  # params.yaml paths key of the sample grid copied next to the report
# A revision counted back from HEAD (HEAD~1, HEAD^^): when the history is too short for it, the report
# says so instead of failing, so a one-commit repository can still be verified.
RELATIVE_TO_HEAD = re.compile(r"HEAD([~^]\d*)+")


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


def unexplained_outputs(committed: dict[str, Any], reproduced: dict[str, Any], rows: list[Row]) -> list[str]:
    """Outputs that differ although their stage ran with the very inputs of the committed run: the same command,
    params and dependency md5s (upstream outputs included). On the same CPU platform a stage is a function of
    its inputs, so such a difference is no noise: the committed file is not what the code makes of them.
    A dependency declared `varies` (metrics/train.json, read for the MLflow run id) is left out of the inputs:
    it differs on every run by design, and its numbers are not what the stage computes from."""
    differs = {r.path for r in rows if r.status == "DIFFERS"}
    varying = {r.path for r in rows if r.status == "skipped"}
    old_stages = (committed or {}).get("stages") or {}
    found = []
    for name, new in ((reproduced or {}).get("stages") or {}).items():
        old = old_stages.get(name)
        if old is None:
            continue
        same_inputs = (
            old.get("cmd") == new.get("cmd")
            and old.get("params") == new.get("params")
            and _without(_md5s(old.get("deps")), varying) == _without(_md5s(new.get("deps")), varying)
        )
        if same_inputs:
            found += sorted(p for p in _md5s(new.get("outs")) if p in differs)
    return found


def _md5s(entries: list[dict[str, Any]] | None) -> dict[str, str | None]:
    return {str(e["path"]): e.get("md5") for e in entries or []}


def _without(md5s: dict[str, str | None], paths: set[str]) -> dict[str, str | None]:
    return {p: m for p, m in md5s.items() if p not in paths}


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


EXACT, WITHIN_NOISE, NOT_REPRODUCED = "reproduced exactly", "reproduced within noise", "NOT reproduced"


@dataclass(frozen=True)
class Verdict:
    """The level reached and the last line on stdout; `checks` are the scores judged (none when exact)."""

    level: str  # EXACT, WITHIN_NOISE or NOT_REPRODUCED
    line: str
    checks: tuple[noise.ScoreCheck, ...] = ()

    @property
    def code(self) -> int:
        return 1 if self.level == NOT_REPRODUCED else 0


def judge(
    rows: list[Row],
    spread: dict[str, Any] | None,
    evals: tuple[Any, Any],
    recipe: dict[str, Any],
    exact: bool = False,
    unexplained: list[str] | None = None,
) -> Verdict:
    """Exact when every compared output has the committed md5. Otherwise (unless `exact` demands bytes) the
    rerun is judged as a new draw of the recipe: each headline score of the committed and of the rerun's
    metrics/eval.json (`evals`) must lie within the committed seed spread's range (mnistgan.lab.noise).
    `unexplained`: outputs that differ although their stage had the committed inputs on the same CPU platform
    (unexplained_outputs): never noise."""
    failed = [r for r in rows if r.failed]
    if not failed:
        same, skipped = sum(r.status == "same" for r in rows), sum(r.status == "skipped" for r in rows)
        return Verdict(
            EXACT,
            f"verify: {EXACT}: all {same} compared outputs match the committed dvc.lock ({skipped} skipped: they vary)",
        )
    missing = [r.path for r in failed if r.status == "missing"]
    if missing:
        return Verdict(NOT_REPRODUCED, f"verify: {NOT_REPRODUCED}: missing from one dvc.lock: {', '.join(missing)}")
    if unexplained:
        changed = [f"{name} {a:.4g} committed, {b:.4g} rerun" for name, a, b in _score_changes(evals)]
        return Verdict(
            NOT_REPRODUCED,
            f"verify: {NOT_REPRODUCED}: {', '.join(unexplained)} differ although their "
            "stage had the committed inputs on the same platform" + (f" ({'; '.join(changed)})" if changed else ""),
        )
    n = "1 output differs" if len(failed) == 1 else f"{len(failed)} outputs differ"
    if exact:
        names = ", ".join(r.path for r in failed)
        return Verdict(NOT_REPRODUCED, f"verify: {NOT_REPRODUCED} exactly (--exact): {n}: {names}")
    if spread is None:
        return Verdict(
            NOT_REPRODUCED,
            f"verify: {NOT_REPRODUCED}: {n} in bytes and no {noise.SPREAD_FILE} "
            "is committed to judge the scores by (run `make spread`)",
        )
    changed = noise.recipe_changes(spread, recipe)
    if changed:
        return Verdict(
            NOT_REPRODUCED,
            f"verify: {NOT_REPRODUCED}: {n} in bytes and {noise.SPREAD_FILE} "
            f"was made for another recipe ({', '.join(changed[:5])} differ; run `make spread`)",
        )
    if evals[0] is None or evals[1] is None:
        which = "committed" if evals[0] is None else "rerun's"
        return Verdict(
            NOT_REPRODUCED, f"verify: {NOT_REPRODUCED}: {n} in bytes and the {which} metrics/eval.json is missing"
        )
    try:
        checks = tuple(noise.check_scores(spread, evals[0], evals[1]))
    except (ValueError, KeyError) as e:  # an eval.json or spread.json without a score: nothing to judge by
        return Verdict(NOT_REPRODUCED, f"verify: {NOT_REPRODUCED}: {n} in bytes and the scores cannot be judged ({e})")
    outside = [c.line() for c in checks if not c.inside]
    if outside:
        return Verdict(NOT_REPRODUCED, f"verify: {NOT_REPRODUCED}: {'; '.join(outside)}", checks)
    return Verdict(
        WITHIN_NOISE,
        f"verify: {WITHIN_NOISE}: {n} in bytes; every headline score of the commit "
        f"and of the rerun lies within the range of {len(spread['runs'])} runs",
        checks,
    )


def _score_changes(evals: tuple[Any, Any]) -> list[tuple[str, float, float]]:
    """(name, committed, rerun) for each headline score that differs between the two eval.json (none missing)."""
    if evals[0] is None or evals[1] is None:
        return []
    try:
        a, b = noise.headline_scores(evals[0]), noise.headline_scores(evals[1])
    except ValueError:
        return []
    return [(name, a[name], b[name]) for name in a if a[name] != b[name]]


def markdown(
    head: str,
    rows: list[Row],
    stale: dict[str, list[str]],
    seconds: float,
    against: str,
    verdict: Verdict | None = None,
    table: list[tuple[str, str, str, bool]] | None = None,
) -> str:
    """reports/verify.md: the level, the fingerprints, the scores judged, the per-output table, stale stages,
    then `against` (the diffs)."""
    lines = [
        "# Reproducibility check",
        "",
        f"Commit `{head[:12]}` rerun from scratch (`dvc repro --force` in a fresh clone, {_minutes(seconds)}); "
        f"each output's md5 compared with the committed `dvc.lock`.",
        "",
        f"**{verdict.line.removeprefix('verify: ')}**" if verdict else "",
    ]
    if table:
        platform = [[k, a, f"**{b}**" if d else b] for k, a, b, d in table]
        lines += ["", md.table(["platform", "committed", "rerun"], platform)]
    if verdict and verdict.checks:
        scores = [[c.name, c.whose, f"{c.value:.4g}", f"[{c.low:.4g}, {c.high:.4g}]",
                   "inside" if c.inside else "**outside**"] for c in verdict.checks]  # fmt: skip
        lines += ["", md.table(["score", "whose", "value", "range over the seeds", ""], scores)]
    marked = {"DIFFERS": "**DIFFERS**", "skipped": "skipped (varies: {})", "missing": "**missing** ({})"}
    outputs = [[f"`{r.path}`", marked.get(r.status, r.status).format(r.note), f"`{_short(r.committed)}`",
                f"`{_short(r.reproduced)}`"] for r in rows]  # fmt: skip
    lines += ["", md.table(["output", "result", "committed md5", "reproduced md5"], outputs)]
    if stale:
        lines += [
            "",
            "The committed `dvc.lock` is stale for these stages (it records other inputs than the "
            "commit holds: run `dvc repro` and commit `dvc.lock`):",
            "",
        ]
        lines += [f"- `{name}`: {', '.join(what)}" for name, what in stale.items()]
    return "\n".join(lines) + "\n\n" + against.strip() + "\n"


def _against(base: str, base_sha: str | None, clone: Path, dvc: str, env: dict[str, str]) -> str:
    if base_sha is None or commit(base_sha, clone) is None:
        return (
            f"## Against {base}\n\nThe clone has no revision `{base}` (the history is too short, or the "
            "commit is on no branch): no metrics or params diff."
        )
    title = f"`{base}` (`{base_sha[:12]}`)"
    metrics = _dvc_markdown(dvc, ["metrics", "diff", base_sha, "--md"], clone, env, base_sha, base)
    params = _dvc_markdown(dvc, ["params", "diff", base_sha, "--md"], clone, env, base_sha, base)
    return (
        f"## Metrics: {title} against the rerun\n\n`dvc metrics diff {base} --md`:\n\n{metrics}\n\n"
        f"## Params: {title} against the rerun\n\n`dvc params diff {base} --md`:\n\n{params}"
    )


def _publish(root: Path, text: str, clone: Path) -> None:
    """reports/verify.md, the GitHub Actions job summary and the reproduced sample grid."""
    report = root / REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(text)
    params = read_yaml(clone / "params.yaml") or {}
    grid = clone / str((params.get("paths") or {}).get(SAMPLES_KEY, "plots/samples.png"))
    if grid.is_file():
        (root / ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, root / ARTIFACTS / grid.name)
    print(f"verify: wrote {REPORT}" + (f" and {ARTIFACTS / grid.name}" if grid.is_file() else ""), file=sys.stderr)


# --- the command -------------------------------------------------------------------------------------------


def verify(cwd: Path, base: str = DEFAULT_BASE, keep: bool = False, exact: bool = False) -> int:
    """Check the repository around `cwd` (see the module docstring); the exit code."""
    root, head = repo_root(cwd)
    for name in ("dvc.yaml", "dvc.lock"):
        if git(["cat-file", "-e", f"{head}:{name}"], root, check=False).returncode != 0:
            raise UserError(f"no {name} committed at HEAD ({head[:12]}): run `dvc repro` and commit {name}")
    base_sha = commit(base, root)
    if base_sha is None and not RELATIVE_TO_HEAD.fullmatch(base):
        raise UserError(f"--base {base}: unknown revision")
    if git(["status", "--porcelain", "--untracked-files=no"], root).stdout.strip():
        print(
            f"verify: warning: uncommitted changes to tracked files are not verified; this reruns the commit "
            f"HEAD ({head[:12]})",
            file=sys.stderr,
        )
    dvc = dvc_bin()

    tmp = Path(tempfile.mkdtemp(prefix="mnistgan-verify-"))
    clone = tmp / "repo"
    try:
        clone_commit(root, head, clone)
        committed = read_yaml(clone / "dvc.lock") or {}  # as committed: the rerun overwrites these
        params = load_params(clone / "params.yaml")
        files = {name: clone / getattr(params.paths, name) for name in ("platform", "metrics_eval")}
        before = {name: clone_json(path) for name, path in files.items()}
        spread = clone_json(clone / noise.SPREAD_FILE)
        varying = varying_outputs(clone)
        pin_cache(clone)
        env = run_env(tmp)
        # --force: the cache: false outputs (data/params.ok, metrics, plots) are committed to git, so a plain
        # `dvc repro` would skip a stage whose outputs are all such files and compare them with themselves.
        print(
            f"verify: rerunning the pipeline of {head[:12]} from scratch in {clone} (dvc repro --force)",
            file=sys.stderr,
        )
        start = time.monotonic()
        code = stream([dvc, "repro", "--force"], clone, env)
        seconds = time.monotonic() - start
        if code != 0:
            print(f"verify: {NOT_REPRODUCED}: dvc repro exited {code} in the clone (its output is above)")
            _publish(
                root,
                f"# Reproducibility check\n\nCommit `{head[:12]}`: `dvc repro --force` in a fresh "
                f"clone **failed** (exit {code}) after {_minutes(seconds)}.\n",
                clone,
            )
            return 1
        reproduced = read_yaml(clone / "dvc.lock") or {}
        rows = compare_locks(committed, reproduced, varying)
        stale = stale_stages(committed, reproduced)
        for name, what in stale.items():
            print(
                f"verify: warning: the committed dvc.lock is stale for stage {name} ({', '.join(what)} differ "
                "from the commit's): run `dvc repro` and commit dvc.lock",
                file=sys.stderr,
            )
        table = noise.platform_table(before["platform"], clone_json(files["platform"]))
        print("\n".join(noise.platform_lines(table)))
        for row in rows:
            print(row.line())
        evals = (before["metrics_eval"], clone_json(files["metrics_eval"]))
        same_cpu = bool(table) and not any(d for _, _, _, d in table) and "gpu" not in (before["platform"] or {})
        unexplained = unexplained_outputs(committed, reproduced, rows) if same_cpu else []
        result = judge(rows, spread, evals, noise.recipe(params), exact, unexplained)
        for check in result.checks:
            print(f"score    {check.line()}")
        against = _against(base, base_sha, clone, dvc, env)
        _publish(root, markdown(head, rows, stale, seconds, against, result, table), clone)
        print(result.line)
        return result.code
    finally:
        if keep:
            print(f"verify: kept the clone and its MLflow store in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog=PROG,
        description="Rerun the whole pipeline of HEAD from scratch in a temporary clone; exact when every "
        "output's md5 matches the committed dvc.lock, else within noise when every headline score lies in the "
        "committed seed spread (metrics/spread.json).",
    )
    parser.add_argument(
        "--base", default=DEFAULT_BASE, help="revision the report's metrics and params diff against (%(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone (its path goes to stderr)")
    parser.add_argument("--exact", action="store_true", help="demand the committed bytes: no verdict within noise")
    # Ctrl-C: the clone is already removed (or kept) by verify's clean-up
    return run_command(parser, lambda args: verify(Path.cwd(), args.base, args.keep, args.exact), argv)


if __name__ == "__main__":
    raise SystemExit(main())
