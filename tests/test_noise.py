"""mnistgan.lab.noise and verify's levels: the seed spread's ranges and the verdict where bytes cannot match."""

from __future__ import annotations

import copy
import math

import pytest
from pipeline_utils import ROOT
from scipy import stats

from mnistgan.config import load_params
from mnistgan.lab import noise
from mnistgan.lab.noise import platform_lines, platform_table
from mnistgan.lab.verify import EXACT, NOT_REPRODUCED, WITHIN_NOISE, Row, judge


def eval_json(
    fid: float = 14.0,
    real_fid: float = 5.3,
    score: float = 9.5,
    precision: float = 0.66,
    recall: float = 0.78,
    classes: int = 10,
) -> dict:
    """The parts of a metrics/eval.json the headline scores read."""
    return {
        "generated": {
            "fid": fid,
            "inception_score": score,
            "precision": precision,
            "recall": recall,
            "classes_covered": classes,
        },
        "real_reference": {"fid": real_fid, "inception_score": 9.7},
    }


RECIPE = noise.recipe(load_params(ROOT / "params.yaml"))
SEEDS = [
    eval_json(13.9, 5.31, 9.54, 0.663, 0.783),
    eval_json(14.3, 5.31, 9.50, 0.670, 0.779),
    eval_json(14.1, 5.31, 9.58, 0.655, 0.788),
]
SPREAD = noise.build_spread([{"seed": i, "eval": e} for i, e in enumerate(SEEDS)], RECIPE)
DIFFERS = [Row("DIFFERS", "models/generator.pt", "a" * 32, "b" * 32), Row("same", "data/mnist.dir", "c", "c")]


def test_prediction_interval_is_students_t_for_one_more_draw():
    low, high = noise.prediction_interval([1.0, 2.0, 3.0], confidence=0.95)
    half = stats.t.ppf(0.975, 2) * 1.0 * math.sqrt(1 + 1 / 3)  # sd of 1, 2, 3 is 1
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    # by default each of the k scores at 1 - 0.05/k, so all k of a fair draw fall inside 95% of the time
    assert pytest.approx(1 - 0.05 / len(noise.HEADLINES)) == noise.CONFIDENCE
    wide = noise.prediction_interval([1.0, 2.0, 3.0])
    assert wide[1] - 2 == pytest.approx(stats.t.ppf(1 - 0.025 / len(noise.HEADLINES), 2) * math.sqrt(4 / 3))
    assert noise.prediction_interval([5.0, 5.0, 5.0]) == (5.0, 5.0)
    with pytest.raises(ValueError, match="at least 2"):
        noise.prediction_interval([1.0])


def test_headline_scores_are_multiples_and_shares_of_real_that_a_retrained_yardstick_keeps():
    scores = noise.headline_scores(eval_json(fid=14.0, real_fid=5.0, score=9.5))
    assert scores == pytest.approx(
        {"fid_multiple": 2.8, "score_ratio": 9.5 / 9.7, "precision": 0.66, "recall": 0.78, "classes_covered": 10}
    )
    # the same samples scored by a retrained classifier: raw FID and the real reference both move
    assert noise.headline_scores(eval_json(fid=13.15, real_fid=5.04))["fid_multiple"] == pytest.approx(2.609, abs=1e-3)
    with pytest.raises(ValueError, match="metrics/eval.json: no 'inception_score'"):
        noise.headline_scores({"generated": {"fid": 1}, "real_reference": {"fid": 1, "inception_score": 1}})


def test_a_spread_needs_three_seeds_and_names_its_recipe():
    with pytest.raises(ValueError, match="at least 3 seeds, got \\[0, 1\\]"):
        noise.build_spread([{"seed": 0, "eval": SEEDS[0]}, {"seed": 1, "eval": SEEDS[1]}], RECIPE)
    assert SPREAD["seeds"] == [0, 1, 2]
    assert set(SPREAD["ranges"]) == set(noise.HEADLINES)
    assert not any(k.startswith(("seed", "paths.", "tracking.", "numerics.")) for k in SPREAD["recipe"])
    assert noise.recipe_changes(SPREAD, RECIPE) == []
    assert noise.recipe_changes(SPREAD, RECIPE | {"train.steps": 5500}) == ["train.steps"]


def test_a_run_of_another_platform_joins_the_spread_of_the_same_recipe():
    # the same seed on another CPU kind: another draw (its scores as the spread keeps them)
    runs = [*SPREAD["runs"], {"seed": 0, "scores": noise.headline_scores(eval_json(13.94, 5.31)), "source": "xeon"}]
    wider = noise.build_spread(runs, RECIPE)
    assert wider["seeds"] == [0, 1, 2, 0] and len(wider["ranges"]["fid_multiple"]["values"]) == 4
    # a params.yaml of older code, flat, says which recipe its run was (keys of other code are ignored)
    raw = {"seed": 0, "train": {"lr": "4e-4", "steps": 11000, "threads": 0}, "evaluate": {"spaces": ["a"]}}
    assert noise.flatten_raw(raw) == {
        "seed": 0,
        "train.lr": 0.0004,
        "train.steps": 11000,
        "train.threads": 0,
        "evaluate.spaces": ["a"],
    }


def test_exact_when_every_compared_output_matches():
    rows = [Row("same", "a", "1", "1"), Row("skipped", "metrics/platform.json", "2", "3", "the platform")]
    v = judge(rows, None, (None, None), RECIPE)
    assert (v.level, v.code) == (EXACT, 0)
    assert v.line == f"verify: {EXACT}: all 1 compared outputs match the committed dvc.lock (1 skipped: they vary)"


def test_within_noise_when_the_bytes_differ_and_every_score_lies_in_the_seeds_range():
    rerun = eval_json(13.15, 5.04, 9.58, 0.666, 0.786)  # another platform's rerun, measured
    v = judge(DIFFERS, SPREAD, (SEEDS[0], rerun), RECIPE)
    assert (v.level, v.code) == (WITHIN_NOISE, 0), v.line
    assert len(v.checks) == 2 * len(noise.HEADLINES) and all(c.inside for c in v.checks)
    assert v.line.startswith(f"verify: {WITHIN_NOISE}: 1 output differs in bytes")
    assert v.line.endswith("range of 3 runs")


def test_a_claim_edited_by_hand_is_not_reproduced_and_named():
    claimed = copy.deepcopy(SEEDS[0])
    claimed["generated"]["fid"] *= 0.7  # 30% better than produced
    v = judge(DIFFERS, SPREAD, (claimed, SEEDS[0]), RECIPE)
    assert (v.level, v.code) == (NOT_REPRODUCED, 1)
    assert "fid_multiple 1.832 (committed) outside [" in v.line and "of 3 runs" in v.line
    assert "(rerun)" not in v.line  # the rerun itself is a fair draw


def test_not_reproduced_without_a_spread_for_this_recipe_or_with_exact_demanded():
    assert "no metrics/spread.json is committed" in judge(DIFFERS, None, (SEEDS[0], SEEDS[1]), RECIPE).line
    other = judge(DIFFERS, SPREAD, (SEEDS[0], SEEDS[1]), RECIPE | {"train.steps": 5500})
    assert other.code == 1 and "made for another recipe (train.steps differ" in other.line
    exact = judge(DIFFERS, SPREAD, (SEEDS[0], SEEDS[1]), RECIPE, exact=True)
    assert exact.code == 1 and exact.line.endswith("1 output differs: models/generator.pt")
    missing = judge([Row("missing", "x", "1", None, "not in the reproduced dvc.lock")], SPREAD, (None, None), RECIPE)
    assert missing.code == 1 and missing.line.endswith("missing from one dvc.lock: x")


def test_the_fingerprints_side_by_side_mark_each_difference():
    a = {"cpu": "Intel(R) Xeon(R)", "aten": "AVX512", "threads": 2}
    b = {"cpu": "AMD EPYC", "aten": "AVX512", "threads": 2, "gpu": "H100"}
    table = platform_table(a, b)
    assert [(k, d) for k, _, _, d in table] == [("cpu", True), ("aten", False), ("threads", False), ("gpu", True)]
    lines = platform_lines(table)
    assert lines[1].startswith("* cpu") and "AMD EPYC" in lines[1] and lines[2].startswith("  aten")
    assert platform_lines(platform_table(None, None))[0].startswith("platform: neither")


def test_on_the_same_platform_an_edited_claim_is_named_however_wide_the_spread():
    claimed = copy.deepcopy(SEEDS[0])
    claimed["generated"]["fid"] *= 0.98  # well inside the seeds' range
    rows = [Row("DIFFERS", "metrics/eval.json", "a" * 32, "b" * 32)]
    assert judge(rows, SPREAD, (claimed, SEEDS[0]), RECIPE).code == 0  # on another platform: a fair draw
    v = judge(rows, SPREAD, (claimed, SEEDS[0]), RECIPE, unexplained=["metrics/eval.json"])
    assert v.code == 1 and v.line.startswith("verify: NOT reproduced: metrics/eval.json differ although their stage")
    assert v.line.endswith("(fid_multiple 2.565 committed, 2.618 rerun)")
