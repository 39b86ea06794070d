"""`mnistgan verify`: the pipeline of HEAD rerun in a temporary clone, every output's md5 compared with the
committed dvc.lock, the user's checkout left as it was.

One end-to-end run on a copy of the suite's shared tiny pipeline run (its dvc.lock committed with one md5
altered); the rest are pure functions and the bad-input exits, which need no pipeline.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_utils import ROOT, env, run
from test_determinism import copy_reproduced, output_hashes

from mnistgan.errors import UserError
from mnistgan.lab.verify import Row, compare_locks, main, stale_stages, varying_outputs

ALTERED = "data/samples.npy"


def lock(outs: dict[str, str], deps: dict[str, str] | None = None, params: dict | None = None) -> dict:
    """A parsed dvc.lock of one stage `s` with these outputs (path -> md5)."""
    stage = {"cmd": "python s.py", "deps": [{"path": p, "hash": "md5", "md5": m} for p, m in (deps or {}).items()],
             "params": {"params.yaml": params or {}},
             "outs": [{"path": p, "hash": "md5", "md5": m} for p, m in outs.items()]}  # fmt: skip
    return {"schema": "2.0", "stages": {"s": stage}}


def test_compare_locks_sorts_every_output_into_same_differs_missing_or_skipped():
    outs = {"a": "1" * 32, "b": "2" * 32, "d.dir": "3" * 32 + ".dir", "gone": "4" * 32, "t.json": "5" * 32}
    committed = lock(outs)
    reproduced = lock({"a": "1" * 32, "b": "9" * 32, "d.dir": "3" * 32 + ".dir", "new": "6" * 32, "t.json": "7" * 32})
    rows = compare_locks(committed, reproduced, {"t.json": "wall-clock seconds"})
    assert [r.line() for r in rows] == [
        "same     a",
        f"DIFFERS  b (committed {'2' * 12}, reproduced {'9' * 12})",
        "same     d.dir",
        "missing  gone (not in the reproduced dvc.lock)",
        "missing  new (not in the committed dvc.lock)",
        "skipped  t.json (varies: wall-clock seconds)",
    ]
    assert [r.path for r in rows if r.failed] == ["b", "gone", "new"]
    same = compare_locks(committed, copy.deepcopy(committed), {})
    assert same == [Row("same", p, m, m) for p, m in sorted(outs.items())]


def test_stale_stages_names_changed_sources_and_params_but_not_upstream_outputs():
    old = lock({"o": "1"}, deps={"s.py": "a", "o": "x"}, params={"lr": 1})
    assert stale_stages(old, copy.deepcopy(old)) == {}
    # another md5 of a dependency that is itself an output: an upstream difference, not a stale lock
    assert stale_stages(old, lock({"o": "1"}, deps={"s.py": "a", "o": "y"}, params={"lr": 1})) == {}
    new = lock({"o": "1"}, deps={"s.py": "b", "o": "x"}, params={"lr": 2})
    assert stale_stages(old, new) == {"s": ["s.py", "param lr"]}


def test_varying_outputs_come_from_dvc_yaml_meta(tmp_path):
    assert set(varying_outputs(ROOT)) == {"metrics/train.json", "models/checkpoint.pt"}
    assert "wall-clock" in varying_outputs(ROOT)["metrics/train.json"]
    (tmp_path / "params.yaml").write_text("paths: {out: o.json}\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    outs:\n      - plain.bin\n      - ${paths.out}:\n"
        "          meta: {varies: time}\n      - ${paths.nope}:\n          cache: false\n"
    )
    assert varying_outputs(tmp_path) == {"o.json": "time"}
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: x\n    outs:\n      - ${paths.nope}:\n"
                                       "          meta: {varies: time}\n")  # fmt: skip
    with pytest.raises(UserError, match=r"\$\{paths.nope\} is not a key of params.yaml"):
        varying_outputs(tmp_path)


def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    def verify_in(folder: Path, *args: str) -> str:
        monkeypatch.chdir(folder)
        assert main(list(args)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    (tmp_path / "plain").mkdir()
    assert "is not inside a git repository" in verify_in(tmp_path / "plain")
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    assert "has no commit yet" in verify_in(repo)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "pipeline"], repo)
    assert "no dvc.lock committed at HEAD" in verify_in(repo)
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "lock"], repo)
    assert "--base no-such-rev: unknown revision" in verify_in(repo, "--base", "no-such-rev")


def sha256_files(root: Path, folder: str) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.slow
def test_verify_reruns_in_a_clone_names_the_altered_output_and_leaves_the_checkout_alone(tmp_path, tmp_path_factory):
    root, _ = copy_reproduced(tmp_path_factory, tmp_path / "repo")
    locked = yaml.safe_load((root / "dvc.lock").read_text())
    real = {o["path"]: o["md5"] for s in locked["stages"].values() for o in s["outs"]}
    fake = "0123456789ab" + real[ALTERED][12:]
    for out in locked["stages"]["sample"]["outs"]:
        if out["path"] == ALTERED:
            out["md5"] = fake
    (root / "dvc.lock").write_text(yaml.safe_dump(locked, sort_keys=False))
    run(["git", "add", "dvc.lock"], root)
    run(["git", "commit", "-q", "-m", "dvc.lock with one md5 altered"], root)
    head = run(["git", "rev-parse", "HEAD"], root).stdout
    before = {"lock": (root / "dvc.lock").read_bytes(), "outputs": output_hashes(root),
              "cache": sha256_files(root, ".dvc/cache")}  # fmt: skip
    tmp, summary = tmp_path / "tmp", tmp_path / "summary.md"
    tmp.mkdir()

    p = run([sys.executable, "-m", "mnistgan.lab.verify"], root, check=False,
            env={**env(), "TMPDIR": str(tmp), "GITHUB_STEP_SUMMARY": str(summary)})  # fmt: skip

    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    assert "Running stage 'train'" in p.stderr, "DVC's progress is not streamed"
    assert "verify: warning" not in p.stderr, p.stderr  # a clean checkout; the lock differs in one output only
    lines = p.stdout.splitlines()
    assert f"DIFFERS  {ALTERED} (committed 0123456789ab, reproduced {real[ALTERED][:12]})" in lines
    varying = varying_outputs(root)
    for path in real:
        if path in varying:
            assert f"skipped  {path} (varies: {varying[path]})" in lines
        elif path != ALTERED:
            assert f"same     {path}" in lines, f"{path} not reproduced:\n{p.stdout}"
    assert len(lines) == len(real) + 1
    assert lines[-1].startswith("verify: FAILED: 1 output not reproduced") and lines[-1].endswith(ALTERED)

    report = (root / "reports/verify.md").read_text()
    assert f"| `{ALTERED}` | **DIFFERS** | `0123456789ab` | `{real[ALTERED][:12]}` |" in report
    assert "| `models/generator.pt` | same |" in report and "`dvc metrics diff HEAD~1 --md`" in report
    assert "`dvc params diff HEAD~1 --md`" in report
    assert summary.read_text() == report
    # the rerun drew the same sample grid as the shared run
    assert (root / "reports/verify/samples.png").read_bytes() == (root / "plots/samples.png").read_bytes()

    # The user's checkout: same dvc.lock, outputs, DVC cache and commit, no MLflow store; the clone is gone.
    assert (root / "dvc.lock").read_bytes() == before["lock"]
    assert output_hashes(root) == before["outputs"]
    assert sha256_files(root, ".dvc/cache") == before["cache"]
    assert run(["git", "rev-parse", "HEAD"], root).stdout == head
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], root).stdout == ""
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()
    # (the stages' own temporary files, e.g. the MLflow store's init lock, may stay: only the clone must go)
    assert [t.name for t in tmp.iterdir() if t.name.startswith("mnistgan-verify-")] == []
