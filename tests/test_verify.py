"""`mnistgan verify` and `mnistgan spread`: the pipeline of HEAD rerun in a temporary clone, every output's md5
compared with the committed dvc.lock and, where bytes differ, the headline scores with the committed seed
spread; the user's checkout left as it was.

One end-to-end test on a copy of the suite's shared tiny pipeline run: its spread over three seeds, a rerun
under another emulated CPU kind (within noise), and the lock and metrics of a shorter run (not reproduced).
The rest are pure functions (the levels themselves: tests/test_noise.py) and the bad-input exits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_utils import OTHER_CPU, ROOT, dvc, env, run
from test_determinism import copy_reproduced, output_hashes

from mnistgan.errors import UserError
from mnistgan.lab.clone import varying_outputs
from mnistgan.lab.verify import Row, compare_locks, main, stale_stages, unexplained_outputs


def lock(outs: dict[str, str], deps: dict[str, str] | None = None, params: dict | None = None) -> dict:
    """A parsed dvc.lock of one stage `s` with these outputs (path -> md5)."""
    stage = {
        "cmd": "python s.py",
        "deps": [{"path": p, "hash": "md5", "md5": m} for p, m in (deps or {}).items()],
        "params": {"params.yaml": params or {}},
        "outs": [{"path": p, "hash": "md5", "md5": m} for p, m in outs.items()],
    }
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


def test_an_output_that_differs_although_its_stage_had_the_committed_inputs_is_unexplained():
    committed = lock({"o": "1" * 32}, deps={"s.py": "a", "up": "x"}, params={"lr": 1})
    same_inputs = lock({"o": "2" * 32}, deps={"s.py": "a", "up": "x"}, params={"lr": 1})
    assert unexplained_outputs(committed, same_inputs, compare_locks(committed, same_inputs, {})) == ["o"]
    for moved in (
        lock({"o": "2" * 32}, deps={"s.py": "a", "up": "y"}, params={"lr": 1}),  # an upstream output
        lock({"o": "2" * 32}, deps={"s.py": "a", "up": "x"}, params={"lr": 2}),
    ):
        assert unexplained_outputs(committed, moved, compare_locks(committed, moved, {})) == []
    # a dependency that varies by design (metrics/train.json: the run id) does not make the inputs another's
    committed = lock({"o": "1" * 32, "t.json": "a" * 32}, deps={"s.py": "a", "t.json": "a" * 32}, params={})
    rerun = lock({"o": "2" * 32, "t.json": "b" * 32}, deps={"s.py": "a", "t.json": "b" * 32}, params={})
    rows = compare_locks(committed, rerun, {"t.json": "the run id"})
    assert unexplained_outputs(committed, rerun, rows) == ["o"]


def test_the_spread_reuses_the_committed_run_only_when_its_lock_records_the_params_of_params_yaml():
    from mnistgan.lab.spread import lock_matches_params

    committed = lock({"o": "1"}, params={"train.lr": 0.0004, "seed": 0})
    committed["stages"]["check"] = {"params": {"params.yaml": {"train": {"lr": 0.0004, "steps": 10}, "seed": 0}}}
    raw = {"seed": 0, "train": {"lr": 0.0004, "steps": 10}}
    assert lock_matches_params(committed, raw)
    assert not lock_matches_params(committed, {"seed": 1, "train": {"lr": 0.0004, "steps": 10}})  # the seed
    assert not lock_matches_params(committed, {"seed": 0, "train": {"lr": 0.001}})


def test_varying_outputs_come_from_dvc_yaml_meta(tmp_path):
    assert set(varying_outputs(ROOT)) == {"metrics/train.json", "metrics/platform.json", "models/checkpoint.pt"}
    assert "wall-clock" in varying_outputs(ROOT)["metrics/train.json"]
    (tmp_path / "params.yaml").write_text("paths: {out: o.json}\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    outs:\n      - plain.bin\n      - ${paths.out}:\n"
        "          meta: {varies: time}\n      - ${paths.nope}:\n          cache: false\n"
    )
    assert varying_outputs(tmp_path) == {"o.json": "time"}
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    outs:\n      - ${paths.nope}:\n          meta: {varies: time}\n"
    )
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
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def verify_lines(root: Path, extra_env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    p = run([sys.executable, "-m", "mnistgan.lab.verify"], root, check=False, env=env() | (extra_env or {}))
    return p.returncode, p.stdout.splitlines(), p.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MNISTGAN_SOAK") != "1", reason="about 11 minutes on 2 cores: `make soak` runs it")
def test_verify_judges_another_platform_within_noise_another_recipe_not_and_leaves_the_checkout_alone(
    tmp_path, tmp_path_factory
):
    root, _ = copy_reproduced(tmp_path_factory, tmp_path / "repo")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "the tiny run's outputs"], root)
    # The recipe's spread over three seeds; the committed run is seed 0's, trained once.
    p = run([sys.executable, "-m", "mnistgan.lab.spread", "--seeds", "0,1,2"], root)
    assert "spread: seed 0: the committed run" in p.stderr and "Running stage 'train'" in p.stderr
    spread = json.loads((root / "metrics/spread.json").read_text())
    assert spread["seeds"] == [0, 1, 2] and spread["runs"][0]["source"].startswith("committed")
    run(["git", "add", "metrics/spread.json"], root)
    run(["git", "commit", "-q", "-m", "the spread over seeds"], root)
    locked = yaml.safe_load((root / "dvc.lock").read_text())
    real = {o["path"]: o["md5"] for s in locked["stages"].values() for o in s["outs"]}
    head = run(["git", "rev-parse", "HEAD"], root).stdout
    before = {
        "lock": (root / "dvc.lock").read_bytes(),
        "outputs": output_hashes(root),
        "cache": sha256_files(root, ".dvc/cache"),
    }
    tmp, summary = tmp_path / "tmp", tmp_path / "summary.md"
    tmp.mkdir()

    # Another platform: the same commit rerun with every library below this CPU's path.
    code, lines, err = verify_lines(root, OTHER_CPU | {"TMPDIR": str(tmp), "GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 0, "\n".join(lines) + err[-3000:]
    assert "Running stage 'train'" in err, "DVC's progress is not streamed"
    assert lines[-1].startswith("verify: reproduced within noise: ") and lines[-1].endswith("range of 3 runs")
    assert lines[0].split() == ["platform", "committed", "rerun"]
    assert any(line.startswith("* aten") for line in lines) and any(line.startswith("  cpu ") for line in lines)
    assert f"same     {'data/mnist'}" in lines  # no arithmetic in prepare
    assert any(line.startswith("DIFFERS  models/classifier.pt (committed ") for line in lines)
    varying = varying_outputs(root)
    assert {line.split()[1] for line in lines if line.startswith("skipped ")} == set(varying) & set(real)
    assert sum(line.startswith("score    ") for line in lines) == 2 * len(spread["ranges"])
    report = (root / "reports/verify.md").read_text()
    assert "**reproduced within noise:" in report and "| aten | DEFAULT | " not in report and "| aten |" in report
    assert "| `models/classifier.pt` | **DIFFERS** |" in report and "`dvc metrics diff HEAD~1 --md`" in report
    assert summary.read_text() == report
    assert (root / "reports/verify/samples.png").is_file()
    # The user's checkout: same dvc.lock, outputs, DVC cache and commit, no MLflow store; the clone is gone.
    assert (root / "dvc.lock").read_bytes() == before["lock"]
    assert output_hashes(root) == before["outputs"]
    assert sha256_files(root, ".dvc/cache") == before["cache"]
    assert run(["git", "rev-parse", "HEAD"], root).stdout == head
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], root).stdout == ""
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()
    # (the stages' own temporary files, e.g. the MLflow store's init lock, may stay: only the clone must go)
    assert [t.name for t in tmp.iterdir() if t.name.startswith("mnistgan-verify-")] == []

    # Another recipe: the dvc.lock and metrics of a run with a sixth of the steps, committed with the recipe's params.
    params_path = root / "params.yaml"
    recipe = params_path.read_text()
    params = yaml.safe_load(recipe)
    params["train"]["steps"] = 20
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(["repro"], root)
    params_path.write_text(recipe)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "outputs of a sixth of the steps"], root)
    code, lines, err = verify_lines(root)
    assert code == 1, "\n".join(lines)
    assert lines[-1].startswith("verify: NOT reproduced: ") and "(committed) outside [" in lines[-1], lines[-1]
    assert "(rerun) outside" not in lines[-1]  # the rerun itself is a draw of the recipe
    assert "stale for stage train (param train.steps" in err
