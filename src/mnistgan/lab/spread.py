"""`mnistgan spread` (`make spread`): the recipe of the commit HEAD run over several seeds in a temporary clone;
their headline scores and each score's range go to metrics/spread.json, the noise by which `make verify`
judges a rerun whose bytes cannot match (mnistgan.lab.noise).

Only the GAN's `seed` changes from run to run; the feature networks keep their own seeds. The commit's own
seed is not trained again when its dvc.lock records the params of params.yaml: its committed
metrics/eval.json and metrics/platform.json are that seed's run. The user's checkout gets only the new
metrics/spread.json; commit it with the dvc.lock it belongs to.

`--add REV` adds the committed run of another revision of the same recipe to the spread in the checkout,
without training: typically the same seed on another platform (another CPU kind, a GPU), whose draw belongs
in the noise another platform's rerun is judged by.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import load_params
from mnistgan.errors import UserError
from mnistgan.lab import noise
from mnistgan.lab.clone import clone_commit, clone_json, commit, dvc_bin, git, pin_cache, repo_root, run_env, stream

PROG = "mnistgan spread"


def lock_matches_params(lock: dict[str, Any], raw_params: dict[str, Any]) -> bool:
    """True when every param value the dvc.lock records equals params.yaml's: the committed outputs were made
    by this recipe and seed (a lock not updated after a change of params.yaml is not)."""
    for stage in (lock.get("stages") or {}).values():
        for values in (stage.get("params") or {}).values():
            for key, value in values.items():  # "train.lr": 0.0004, or a whole section as a dict
                node: Any = raw_params
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node != value:
                    return False
    return True


def run_seeds(clone: Path, seeds: list[int], env: dict[str, str], head: str) -> list[dict[str, Any]]:
    """One run per seed in the clone: the committed one for the commit's own seed when its lock is fresh."""
    params_path = clone / "params.yaml"
    raw = yaml.safe_load(params_path.read_text())
    params = load_params(params_path)
    files = (clone / params.paths.metrics_eval, clone / params.paths.platform)
    lock = yaml.safe_load((clone / "dvc.lock").read_text()) or {}
    own_fresh = lock_matches_params(lock, raw) and all(f.is_file() for f in files)
    dvc, runs = dvc_bin(), []
    for seed in seeds:
        if seed == params.seed and own_fresh:
            print(f"spread: seed {seed}: the committed run ({head[:12]})", file=sys.stderr)
            runs.append(
                {
                    "seed": seed,
                    "eval": clone_json(files[0], required=True),
                    "platform": clone_json(files[1], required=True),
                    "source": f"committed {head[:12]}",
                }
            )
            continue
        raw["seed"] = seed
        params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"spread: seed {seed}: dvc repro in {clone}", file=sys.stderr)
        code = stream([dvc, "repro"], clone, env)
        if code != 0:
            raise UserError(f"seed {seed}: dvc repro exited {code} in the clone (its output is above)")
        runs.append(
            {
                "seed": seed,
                "eval": clone_json(files[0], required=True),
                "platform": clone_json(files[1], required=True),
                "source": "rerun",
            }
        )
    return runs


def table(result: dict[str, Any]) -> list[str]:
    """The seeds' scores, one line each, then each score's range."""
    names = list(result["ranges"])
    lines = ["seed  " + "  ".join(f"{n:>15}" for n in names) + "  source"]
    for run in result["runs"]:
        lines.append(
            f"{run['seed']:<6}" + "  ".join(f"{run['scores'][n]:>15.4f}" for n in names) + f"  {run['source']}"
        )
    lines.append("range " + "  ".join(f"{r['low']:>7.4g}-{r['high']:<7.4g}" for r in result["ranges"].values()))
    return lines


def spread(cwd: Path, seeds: list[int], keep: bool = False) -> int:
    if len(set(seeds)) < noise.MIN_SEEDS:
        raise UserError(f"--seeds: {noise.MIN_SEEDS} different seeds at least, got {seeds}")
    root, head = repo_root(cwd)
    tmp = Path(tempfile.mkdtemp(prefix="mnistgan-spread-"))
    clone = tmp / "repo"
    try:
        clone_commit(root, head, clone)
        pin_cache(clone)
        recipe = noise.recipe(load_params(clone / "params.yaml"))
        result = noise.build_spread(run_seeds(clone, seeds, run_env(tmp), head), recipe)
        out = root / noise.SPREAD_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        tmp_out.replace(out)  # whole or not at all
        print("\n".join(table(result)))
        print(f"spread: wrote {noise.SPREAD_FILE} ({len(seeds)} seeds of the recipe of {head[:12]}); commit it")
        return 0
    finally:
        if keep:
            print(f"spread: kept the clone in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def add_revisions(cwd: Path, revisions: list[str]) -> int:
    """Add each revision's committed run to metrics/spread.json (see the module docstring)."""
    root, _ = repo_root(cwd)
    path = root / noise.SPREAD_FILE
    if not path.is_file():
        raise UserError(f"{noise.SPREAD_FILE}: not found; make the spread first (make spread)")
    spread = json.loads(path.read_text())
    runs = list(spread["runs"])
    for rev in revisions:
        sha = commit(rev, root)
        if sha is None:
            raise UserError(f"--add {rev}: unknown revision")
        raw = yaml.safe_load(_show(root, sha, "params.yaml"))
        flat = noise.flatten_raw(raw)
        changed = sorted(k for k, v in spread["recipe"].items() if flat.get(k) != v)
        if changed:
            raise UserError(f"--add {rev}: another recipe ({', '.join(changed[:5])} differ from the spread's)")
        paths = raw.get("paths") or {}
        eval_json = json.loads(_show(root, sha, paths.get("metrics_eval", "metrics/eval.json")))
        platform_text = _show(root, sha, paths.get("platform", "metrics/platform.json"), required=False)
        runs.append(
            {
                "seed": raw.get("seed", 0),
                "scores": noise.headline_scores(eval_json),
                "source": f"committed {sha[:12]}",
                "platform": json.loads(platform_text) if platform_text else {},
            }
        )
    result = noise.build_spread(runs, spread["recipe"])
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print("\n".join(table(result)))
    print(f"spread: wrote {noise.SPREAD_FILE} ({len(runs)} runs); commit it")
    return 0


def _show(root: Path, sha: str, name: str, required: bool = True) -> str:
    p = git(["show", f"{sha}:{name}"], root, check=False)
    if p.returncode != 0:
        if required:
            raise UserError(f"{sha[:12]}: no {name} committed there")
        return ""
    return p.stdout


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: {text!r} is not a comma-separated list of integers") from None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated GAN seeds, 3 at least (%(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone (its path goes to stderr)")
    parser.add_argument("--add", help="comma-separated revisions whose committed run of this recipe joins the spread")

    def command(args: argparse.Namespace) -> int:
        if args.add:
            return add_revisions(Path.cwd(), [r for r in args.add.split(",") if r.strip()])
        return spread(Path.cwd(), _seeds(args.seeds), args.keep)

    return run_command(parser, command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
