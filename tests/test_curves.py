import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from mnistgan.lab import curves
from mnistgan.lab.recipes import CANDIDATES, FIRST_ROUND, default_recipe, recipe_name, recipe_overrides


def tiny_mnist(n=256, seed=0):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        x_train=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, n).astype(np.uint8)
    )


class CountingMonitor:
    """Stands in for FidMonitor: FID falls 100 per check, from 1000; real images score 10."""

    reference, real_fid = 0.0, 10.0

    def __init__(self):
        self.calls = 0

    def __call__(self, g):
        self.calls += 1
        return 1000.0 - 100.0 * self.calls

    def scores(self, g):
        fid = self(g)
        return {"fid": fid, "precision": 0.5, "recall": 1 - fid / 1000}


def test_curve_checks_on_schedule_and_reports_thresholds(monkeypatch):
    # A fake clock: 0.05 s per perf_counter call, so the schedule does not depend on the machine's speed.
    clock = iter(range(10**6))
    monkeypatch.setattr(curves.time, "perf_counter", lambda: 0.05 * next(clock))
    monitor = CountingMonitor()
    c = curves.run_curve(
        "ema-warmup", tiny_mnist(), lambda cfg: monitor, seconds=1.0, check_every=0.25, log=lambda s: None
    )
    assert [k["at"] for k in c["checks"]] == [0.25, 0.5, 0.75, 1.0]
    assert all(k["seconds"] >= k["at"] for k in c["checks"])  # taken at the first loss row past the mark
    assert [k["fid"] for k in c["checks"]] == [900.0, 800.0, 700.0, 600.0]
    assert c["steps"] > 0 and c["images_per_second"] > 0 and c["grid"].shape == (100, 28, 28)
    assert curves.first_time_below(c["checks"], 750.0) == c["checks"][2]["seconds"]
    assert curves.first_time_below(c["checks"], 10.0) is None
    assert curves.fid_at(c["checks"], 0.5) == 800.0 and curves.fid_at(c["checks"], 0.6) is None
    c["samples"], c["threads"] = 2000, 1
    table = curves.render_table([c], (0.5, 1.0))
    # a recipe's change column says what it changes from params.yaml
    assert "| `ema-warmup` | conditional=False, lr=0.0002, d_width=64, r1_weight=0.0 |" in table
    assert "| 800.0 | 600.0 | 600.0 |" in table
    json.dumps({k: v for k, v in c.items() if k != "grid"})  # what curves.json holds must serialise


@pytest.fixture
def twelve_step_recipes(monkeypatch):
    """Every recipe a tiny one of 12 steps (loss rows at 5, 10, 12), on a fake clock of 0.25 s per reading."""
    clock = iter(range(10**6))
    monkeypatch.setattr(curves.time, "perf_counter", lambda: 0.25 * next(clock))
    fixed = dataclasses.replace(curves.candidate_config("ema-warmup"), steps=12, batch_size=8, log_every=5)
    monkeypatch.setattr(curves, "candidate_config", lambda name: fixed)


def test_a_recipe_of_fixed_steps_is_scored_at_its_end(twelve_step_recipes):
    c = curves.run_curve(
        "ema-warmup", tiny_mnist(), lambda cfg: CountingMonitor(), seconds=100.0, check_every=0.75, log=lambda s: None
    )
    # loss rows at steps 5, 10 and 12 (the last) come at 0.5, 0.75 and 1.0 s: the 0.75 s check falls on step 10,
    # and the run ends before the 1.5 s mark
    assert [k["step"] for k in c["checks"]] == [10, 12] and c["steps"] == 12
    assert c["checks"][-1]["at"] == c["checks"][-1]["seconds"] == c["train_seconds"] > c["checks"][-2]["seconds"]
    assert [k["fid"] for k in c["checks"]] == [900.0, 800.0]


def test_merge_keeps_the_later_run_of_a_recipe(tmp_path, twelve_step_recipes):
    def run(name):
        return curves.run_curve(
            name, tiny_mnist(), lambda cfg: CountingMonitor(), seconds=100.0, check_every=0.25, log=lambda s: None
        ) | {"samples": 10, "threads": 1}

    meta = {"machine": "m", "date": "d", "seconds": 1.0, "check_every": 0.25, "samples": 10, "command": "first"}
    curves.write_outputs([run("ema-warmup"), run("baseline")], [meta], tmp_path / "a")
    curves.write_outputs([run("ema-warmup") | {"steps": 99}], [meta | {"command": "rerun"}], tmp_path / "b")
    curves.merge([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "both")
    merged = json.loads((tmp_path / "both" / "curves.json").read_text())
    assert [(c["recipe"], c["steps"]) for c in merged["curves"]] == [("ema-warmup", 99), ("baseline", 12)]
    assert [m["command"] for m in merged["runs"]] == ["first", "rerun"]
    with np.load(tmp_path / "both" / "grids.npz") as grids:
        assert sorted(grids.files) == ["baseline", "ema-warmup"]


def test_recipes_are_one_change_on_the_base_and_found_by_params():
    from mnistgan.config import TrainConfig

    for name in CANDIDATES:
        TrainConfig(**recipe_overrides(name))  # every recipe is a valid config
    assert recipe_overrides("ema-warmup") == default_recipe() | FIRST_ROUND  # the first rounds' start
    assert recipe_overrides("default") == default_recipe()  # params.yaml's, unchanged
    params = {k: str(v) for k, v in recipe_overrides("conditional").items()} | {"steps": "3000"}
    assert recipe_name(params) == "conditional"
    assert recipe_name(params | {"lr": "0.1"}) is None
    upsampled = {k: str(v) for k, v in recipe_overrides("default-upsample-nearest").items()}
    assert recipe_name(upsampled) == "default-upsample-nearest"  # not "default", whose keys it also matches
    assert curves.candidate_config("default-lr-decay").steps == 6000  # a length of its own: the decay needs it
    assert curves.candidate_config("default").steps == 10**9
    # the previous default (no R1) and the hour-long recipe are told apart from the default by their values
    previous = {k: str(v) for k, v in recipe_overrides("previous-default").items()}
    assert recipe_name(previous) == "previous-default"
    assert recipe_name(previous | {"r1_weight": "0.1"}) == "default"
    assert recipe_name(previous | {"r1_weight": "0.1", "steps": "100000"}) == "long"
    assert curves.candidate_config("long").steps == 100000
    with pytest.raises(KeyError, match="known recipes"):
        recipe_overrides("nope")


def test_unknown_recipe_and_missing_inputs_fail_in_one_line(tmp_path, capsys):
    assert curves.main(["--recipes", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert curves.main(["--recipes", "baseline", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x_train.npy: file not found" in err and "dvc repro prepare" in err
    assert not (tmp_path / "o").exists()


def test_sweep_queues_only_the_keys_that_differ_from_params(capsys):
    from mnistgan.lab import recipes

    assert recipes.main(["--dry-run", "--recipes", "default,unconditional", "--seconds", "90"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dvc exp run --queue -S seed=0,1,2 -S train.max_seconds=90.0 -S train.steps=1000000"
    assert lines[1].endswith("-S seed=0,1 -S train.max_seconds=90.0 -S train.steps=1000000 -S train.conditional=false")
    assert recipes.main(["--dry-run", "--recipes", "nope"]) == 2


def test_the_recorded_command_names_the_sub_command_once():
    assert curves.own_arguments(["curves", "--recipes", "long"]) == ["--recipes", "long"]  # via `mnistgan curves`
    assert curves.own_arguments(["--recipes", "long"]) == ["--recipes", "long"]  # via python -m
