"""`mnistgan score`: input formats, one-line errors, and a small end-to-end run on a fake data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from schema_utils import schema_problems

from mnistgan.config import DEFAULT_SPACES, FEATURE_SPACES
from mnistgan.evaluation import score_cli, scoring, suite
from mnistgan.io import InputError

SRC = Path(__file__).resolve().parents[1] / "src"


def digits(n: int, seed: int = 0) -> np.ndarray:
    """Digit-like uint8 (n, 28, 28): black background (so every image has 0s) and a bright random blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    cy, cx = rng.uniform(9, 19, (2, n, 1, 1))
    r = rng.uniform(3, 8, (n, 1, 1))
    blob = np.exp(-((((yy - cy) ** 2 + (xx - cx) ** 2) / r**2) ** 2)) * rng.uniform(150, 255, (n, 1, 1))
    return np.clip(blob + rng.normal(0, 8, blob.shape) * (blob > 20), 0, 255).astype(np.uint8)


# --- loaders --------------------------------------------------------------------------------------

U8 = digits(12)


def _save_png_folder(folder: Path, images: np.ndarray, mode: str = "L") -> Path:
    from PIL import Image

    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img, "L").convert(mode).save(folder / f"{i:05d}.png")
    return folder


WRITERS = {
    "npy uint8": lambda p: np.save(p / "a.npy", U8),
    "npy uint8 channel": lambda p: np.save(p / "a.npy", U8[:, None]),
    "npy int64": lambda p: np.save(p / "a.npy", U8.astype(np.int64)),
    "npy float32 [0,1]": lambda p: np.save(p / "a.npy", U8.astype(np.float32) / 255),
    "npy float64 [-1,1] channel": lambda p: np.save(p / "a.npy", (U8[:, None] / 127.5 - 1)),
    "npy float16 [-1,1]": lambda p: np.save(p / "a.npy", (U8 / 127.5 - 1).astype(np.float16)),
    "npz single": lambda p: np.savez(p / "a.npz", anything=U8),
    "npz samples": lambda p: np.savez(p / "a.npz", samples=U8.astype(np.float32) / 127.5 - 1, labels=np.arange(12)),
    "npz compressed images": lambda p: np.savez_compressed(p / "a.npz", images=U8, z=np.zeros((12, 100))),
    "png L": lambda p: _save_png_folder(p / "pngs", U8),
    "png RGB": lambda p: _save_png_folder(p / "pngs", U8, "RGB"),
    "png LA": lambda p: _save_png_folder(p / "pngs", U8, "LA"),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_input_format_reads_back_the_same_uint8_images(tmp_path, fmt):
    WRITERS[fmt](tmp_path)
    (path,) = [p for p in tmp_path.iterdir()]
    images, read_as = score_cli.load_images(path)
    assert images.dtype == np.uint8 and images.shape == (12, 28, 28)
    np.testing.assert_array_equal(images, U8)
    assert read_as


def test_float_generator_output_matches_the_pipeline_conversion():
    torch = pytest.importorskip("torch")
    from mnistgan.tensors import to_uint8

    x = torch.rand(20, 1, 28, 28) * 2.0002 - 1.0001  # tanh-like output, slightly past +-1 by rounding
    ours, convention = score_cli.images_to_uint8(x.numpy())
    assert convention == "float [-1, 1]"
    np.testing.assert_array_equal(ours, to_uint8(x).numpy())


# --- errors ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_pipeline(tmp_path_factory):
    """A data folder with 700 train / 300 test digit-like images and an untrained classifier file."""
    torch = pytest.importorskip("torch")
    from mnistgan.evaluation.classifier import Classifier, DeepClassifier, classifier_file
    from mnistgan.io import save_npy, save_torch

    root = tmp_path_factory.mktemp("pipeline")
    data = root / "mnist"
    for name, array in {
        "x_train": digits(700, 1),
        "y_train": np.arange(700, dtype=np.uint8) % 10,
        "x_test": digits(300, 2),
        "y_test": np.arange(300, dtype=np.uint8) % 10,
    }.items():
        save_npy(data / f"{name}.npy", array)
    torch.manual_seed(0)
    save_torch(root / "classifier.pt", classifier_file(Classifier().eval(), 0.0))
    torch.manual_seed(1)
    save_torch(root / "extractor.pt", classifier_file(DeepClassifier().eval(), 0.0))
    samples = root / "samples.npy"
    np.save(samples, digits(500, 3))
    return {
        "root": root,
        "data": data,
        "classifier": root / "classifier.pt",
        "extractor": root / "extractor.pt",
        "samples": samples,
    }


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = score_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, pattern: str) -> None:
    import re

    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mnistgan score: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


BAD_ARRAYS = {
    "nan": (np.where(np.arange(784 * 20).reshape(20, 28, 28) == 5, np.nan, 0.5), r"1 of 20 images contain NaN"),
    "inf": (np.full((20, 28, 28), np.inf, np.float32), r"20 of 20 images contain NaN or Inf"),
    "shape": (np.zeros((20, 32, 32), np.uint8), r"shape \(20, 32, 32\); expected \(N, 28, 28\)"),
    "channels": (np.zeros((20, 3, 28, 28), np.uint8), r"shape \(20, 3, 28, 28\)"),
    "dtype": (np.zeros((20, 28, 28), bool), r"dtype bool; expected uint8 or float"),
    "range": (np.full((20, 28, 28), 200.0), r"float pixels in \[200, 200\] fit none of the accepted ranges"),
    "negative int": (np.full((20, 28, 28), -3), r"integer pixels in \[-3, -3\]; expected 0..255"),
    "few": (np.zeros((5, 28, 28), np.uint8), r"5 images; at least 10 needed"),
    "empty": (np.zeros((0, 28, 28), np.uint8), r"holds no images"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_bad_arrays_give_one_error_line_and_exit_2(tmp_path, capsys, fake_pipeline, case):
    array, pattern = BAD_ARRAYS[case]
    np.save(tmp_path / "bad.npy", array)
    code, out, err = run_main(
        capsys,
        tmp_path / "bad.npy",
        "--classifier",
        fake_pipeline["classifier"],
        "--data",
        fake_pipeline["data"],
        "--no-cache",
    )
    assert_one_line_error(code, out, err, pattern)


def test_bad_paths_and_folders(tmp_path, capsys, fake_pipeline):
    (tmp_path / "empty").mkdir()
    _save_png_folder(tmp_path / "big", np.zeros((2, 28, 28), np.uint8))
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big" / "00009.png")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    np.savez(tmp_path / "many.npz", a=U8, b=U8)
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    (tmp_path / "a.txt").write_text("1 2 3")
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY garbage")
    common = ("--classifier", fake_pipeline["classifier"], "--data", fake_pipeline["data"])
    cases = {
        tmp_path / "missing.npy": "no such file or folder",
        tmp_path / "empty": "no .png files in this folder",
        tmp_path / "big": r"00009.png: 32x32 pixels; expected 28x28",
        tmp_path / "broken": r"a.png: not a readable PNG",
        tmp_path / "many.npz": r"holds arrays \['a', 'b'\]; expected one array or one named x, images or samples",
        tmp_path / "objects.npz": r"objects.npz\[x\]: unreadable array \(Object arrays cannot be loaded",
        tmp_path / "a.txt": "unsupported input",
        tmp_path / "trunc.npy": "corrupt or unreadable array file",
    }
    for path, pattern in cases.items():
        assert_one_line_error(*run_main(capsys, path, *common), pattern)


def test_missing_or_mismatched_pipeline_outputs(tmp_path, capsys, fake_pipeline):
    import torch

    samples, data, clf = fake_pipeline["samples"], fake_pipeline["data"], fake_pipeline["classifier"]
    code, out, err = run_main(capsys, samples, "--classifier", tmp_path / "nope.pt", "--data", data)
    assert_one_line_error(code, out, err, r"nope.pt: classifier file not found; run `dvc repro classifier`")
    code, out, err = run_main(capsys, samples, "--classifier", clf, "--data", tmp_path / "nodata")
    assert_one_line_error(code, out, err, r"nodata/x_train.npy: file not found; rerun the prepare stage")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    code, out, err = run_main(capsys, samples, "--classifier", tmp_path / "other.pt", "--data", data)
    assert_one_line_error(code, out, err, r"not a classifier file of this version")
    obj = torch.load(clf, weights_only=True)
    obj["state_dict"]["body.0.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(obj, tmp_path / "changed.pt")
    code, out, err = run_main(capsys, samples, "--classifier", tmp_path / "changed.pt", "--data", data)
    assert_one_line_error(code, out, err, r"lenet weights do not match the network in classifier.py")
    code, out, err = run_main(capsys, samples, "--classifier", clf, "--data", data, "--extractor", tmp_path / "x.pt")
    assert_one_line_error(code, out, err, r"x.pt: extractor file not found; run `dvc repro extractor`")
    code, out, err = run_main(capsys, samples, "--classifier", clf, "--data", data, "--spaces", "classifier/pixels")
    assert_one_line_error(code, out, err, r"--spaces: unknown feature space 'classifier/pixels'; known: ")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    code, out, err = run_main(capsys, samples, "--classifier", tmp_path / "corrupt.pt", "--data", data)
    assert_one_line_error(code, out, err, r"corrupt or unreadable torch file")
    code, out, err = run_main(capsys, samples, "--classifier", clf, "--data", data, "--n-reference", "700")
    assert_one_line_error(code, out, err, r"n_reference 700: must be at least 10 and below the 700 training")
    code, out, err = run_main(capsys, samples, "--splits", "0")
    assert_one_line_error(code, out, err, r"--splits: must be a positive integer")
    code, out, err = run_main(capsys, samples, "--bogus")
    assert_one_line_error(code, out, err, r"unrecognized arguments: --bogus")


@pytest.mark.parametrize("entry", [["-m", "mnistgan", "score"], ["-m", "mnistgan.evaluation.score_cli"]])
def test_entry_points_exit_2_without_a_traceback(tmp_path, entry):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    np.save(tmp_path / "x.npy", U8)
    proc = subprocess.run(
        [sys.executable, *entry, str(tmp_path / "x.npy"), "--classifier", str(tmp_path / "no.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"mnistgan score: error: {tmp_path / 'no.pt'}: classifier file not found; "
        "run `dvc repro classifier` (or pass --classifier)"
    ]


# --- end to end -----------------------------------------------------------------------------------


def test_score_end_to_end_with_cache(tmp_path, capsys, fake_pipeline):
    p = fake_pipeline
    argv = (
        p["samples"],
        "--classifier",
        p["classifier"],
        "--extractor",
        p["extractor"],
        "--data",
        p["data"],
        "--n-reference",
        200,
        "--cache-dir",
        tmp_path / "cache",
        "--json",
        tmp_path / "out" / "score.json",
    )
    code, out, err = run_main(capsys, *argv)
    assert code == 0, err
    result = json.loads(out)
    assert json.loads((tmp_path / "out" / "score.json").read_text()) == result
    assert schema_problems(result) == []  # every key as docs/scores.md describes it, the same as eval.json's
    for scores in (result["generated"], result["real_reference"]):
        assert set(suite.EVALUATE_KEYS) <= set(scores)
        assert all(np.isfinite(scores[k]) for k in suite.EVALUATE_KEYS)
    gen = result["generated"]
    assert gen["n_samples"] == 500 and result["real_reference"]["n_samples"] == 200 == result["n_reference"]
    for key in suite.INTERVAL_METHODS:  # every headline score's 95% interval
        assert len(gen[f"{key}_ci95"]) == 2 and gen[f"{key}_ci95"][0] <= gen[f"{key}_ci95"][1], key
    assert result["read_as"] == "npy, uint8 0..255"
    # every feature space, each FID as a multiple of its own real value, and where the features came from
    assert sorted(result["feature_spaces"]) == sorted(DEFAULT_SPACES)  # the evaluate stage's, by default
    for space, s in result["feature_spaces"].items():
        assert s["fid_multiple"] == pytest.approx(s["fid"] / s["fid_real"]) and s["identity"]["space"] == space
        assert len(s["identity"]["weights_sha256"]) == 16
    multiples = [s["fid_multiple"] for s in result["feature_spaces"].values()]
    assert result["agreement"]["fid_multiple_spread"] == pytest.approx(max(multiples) - min(multiples))
    assert result["headline_features"] == result["feature_spaces"]["classifier/penultimate"]["identity"]

    # Second run: the real features come from the cache (one entry per network), and the result is the same.
    entries = sorted((tmp_path / "cache").iterdir())
    assert len(entries) == 2 and all(
        {f.name for f in e.iterdir()} == {"features.npz", "thresholds.json"} for e in entries
    )
    code, out, err = run_main(capsys, *argv)
    assert code == 0, err
    assert json.loads(out) == result

    # The scoring core the evaluate stage calls gives the same numbers.
    from mnistgan.data import load_mnist
    from mnistgan.evaluation.classifier import check_classifier_file, classifier_from_file
    from mnistgan.io import load_torch

    models = {
        n: classifier_from_file(load_torch(p[n], check=check_classifier_file)) for n in ("classifier", "extractor")
    }
    mnist = load_mnist(p["data"])
    reals = {n: scoring.real_features(m, mnist) for n, m in models.items()}
    core = scoring.score_all(np.load(p["samples"]), models, reals, FEATURE_SPACES, n_reference=200)
    for part in ("generated", "real_reference"):
        assert {k: v for k, v in core[part].items() if not k.endswith("_ci95")} == pytest.approx(
            {k: v for k, v in result[part].items() if not k.endswith("_ci95")}, rel=1e-9
        )
        assert {k: v for k, v in core[part].items() if k.endswith("_ci95")} == {
            k: v for k, v in result[part].items() if k.endswith("_ci95")
        }


def test_the_reference_has_the_inputs_own_size(tmp_path, capsys, fake_pipeline, monkeypatch):
    """Without --n-reference the real side has as many images as the input (FID's bias depends on N)."""
    p = fake_pipeline
    monkeypatch.chdir(tmp_path)  # no models/extractor.pt here
    np.save(tmp_path / "small.npy", digits(120, 9))
    code, out, err = run_main(
        capsys,
        tmp_path / "small.npy",
        "--classifier",
        p["classifier"],
        "--data",
        p["data"],
        "--extractor",
        p["extractor"],
        "--no-cache",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["generated"]["n_samples"] == result["n_reference"] == result["real_reference"]["n_samples"] == 120
    # no extractor file at the default path: the classifier's feature spaces only
    code, out, err = run_main(
        capsys, tmp_path / "small.npy", "--classifier", p["classifier"], "--data", p["data"], "--no-cache"
    )
    assert code == 0, err
    assert sorted(json.loads(out)["feature_spaces"]) == ["classifier/blocks", "classifier/penultimate"]


def test_scoring_training_images_flags_memorisation(fake_pipeline):
    torch = pytest.importorskip("torch")
    from mnistgan.data import load_mnist
    from mnistgan.evaluation.classifier import Classifier

    torch.manual_seed(0)
    clf = Classifier().eval()
    mnist = load_mnist(fake_pipeline["data"])
    real = scoring.real_features(clf, mnist)
    copies = scoring.score_all(mnist.x_train[:300], {"classifier": clf}, {"classifier": real})["generated"]
    reference = scoring.reference_scores(real, n_reference=300)
    assert copies["memorisation"] == 1.0  # every copy has distance 0 to its training image
    assert 0.2 < reference["memorisation"] < 0.8  # held-out real images: about half, by construction


def test_score_all_and_reference_check_their_inputs(fake_pipeline):
    pytest.importorskip("torch")
    from mnistgan.data import load_mnist
    from mnistgan.evaluation.classifier import Classifier

    mnist = load_mnist(fake_pipeline["data"])
    clf = Classifier().eval()
    models, reals = {"classifier": clf}, {"classifier": scoring.real_features(clf, mnist)}
    with pytest.raises(InputError, match=r"images: shape \(20, 28, 28\) float64"):
        scoring.score_all(np.zeros((20, 28, 28)), models, reals)
    with pytest.raises(InputError, match=r"images: 9 samples; at least 10 needed"):
        scoring.score_all(np.zeros((9, 28, 28), np.uint8), models, reals)
    with pytest.raises(InputError, match=r"n_reference 5: must be at least 10"):
        scoring.reference_scores(reals["classifier"], n_reference=5)
    with pytest.raises(InputError, match=r"need networks \['extractor'\]"):
        scoring.score_all(mnist.x_test[:50], models, reals, ("extractor/blocks",))
