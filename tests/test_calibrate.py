"""mnistgan.lab.calibrate: the corruption ladder's sets and the verdicts and tables made from their scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnistgan.lab import calibrate

torch = pytest.importorskip("torch")


def real_like(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like images: a bright bar whose row encodes the label, on black."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(y):
        x[i, 4 + 2 * label : 8 + 2 * label, 6:22] = 200
    return x, y


@pytest.mark.parametrize("family", [f for f in calibrate.FAMILIES if f != "dropped classes"])
def test_every_damaging_family_damages_more_with_severity_and_repeats(family):
    x, y = real_like()
    levels = calibrate.FAMILIES[family][1]
    assert len(levels) >= 3
    damage = []
    for level in levels:
        out = calibrate.corrupt(family, level, x, y, seed=0)
        assert out.shape == x.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, calibrate.corrupt(family, level, x, y, seed=0))  # same set every run
        damage.append(float(np.abs(out.astype(int) - x).mean()))
    assert damage[0] > 0 and damage == sorted(damage), damage


def test_dropped_classes_keeps_only_the_first_digits():
    x, y = real_like(200)
    out = calibrate.corrupt("dropped classes", 7, x, y, seed=0)  # 3 digits remain: 0, 1, 2
    rows = {int(np.flatnonzero(img.any(axis=1))[0]) for img in out}
    assert rows == {4, 6, 8}


def test_ladder_verdict_spearman_and_tables(tmp_path):
    from mnistgan.data import MNIST
    from mnistgan.evaluation.classifier import Classifier, DeepClassifier
    from mnistgan.evaluation.scoring import real_features

    x, y = real_like(400, 1)
    xt, yt = real_like(200, 2)
    mnist = MNIST(x, y, xt, yt)
    torch.manual_seed(0)
    models = {"classifier": Classifier().eval(), "extractor": DeepClassifier().eval()}
    reals = {n: real_features(m, mnist) for n, m in models.items()}
    spaces = ("classifier/penultimate", "extractor/blocks")
    result = calibrate.ladder(models, reals, x[-50:], y[-50:], spaces, log=lambda s: None)
    assert len(result["rows"]) == 1 + 3 * len(calibrate.FAMILIES)
    assert result["rows"][0]["set"] == "clean"
    assert result["rows"][0]["scores"]["classifier/penultimate"]["fid_multiple"] == pytest.approx(1.0)
    assert set(result["verdict"]) == set(spaces)
    for v in result["verdict"].values():
        assert v["rising_everywhere"] == (not v["not_rising"])
    ((pair, rho),) = result["spearman_fid"].items()
    assert pair == "classifier/penultimate ~ extractor/blocks" and -1 <= rho <= 1
    reading = calibrate.reading_table(models, reals, x[-60:], y[-60:], spaces)
    assert [r["set"] for r in reading] == [name for name, _, _ in calibrate.READING_SETS]
    meta = {
        "command": "test",
        "machine": "m",
        "date": "d",
        "n": 50,
        "n_read": 60,
        "networks": {"classifier": "lenet", "extractor": "deep"},
    }
    text = calibrate.render(result, reading, spaces, spaces, meta)
    assert "| additive noise: +-16 of 255 |" in text and "Rank agreement" in text and "| half junk |" in text
    calibrate.plot(result, spaces, tmp_path / "ladder.png")
    assert (tmp_path / "ladder.png").stat().st_size > 1000
    json.dumps(result)  # the result is written as JSON
