"""`mnistgan generate` and the per-seed generation it shares with the MLflow model (sample.digits_from_seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnistgan.config import TrainConfig
from mnistgan.gan.generate import main
from mnistgan.gan.models import build_gan
from mnistgan.gan.sample import digits_from_seeds, generator_file
from mnistgan.io import save_torch


def make_generator(path, conditional: bool = True, seed: int = 0):
    """A randomly initialised dcgan-small generator file (the format the train stage writes)."""
    torch.manual_seed(seed)
    cfg = TrainConfig(conditional=conditional)
    g, _ = build_gan(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width)
    save_torch(path, generator_file(cfg, 0, 1, False, g.eval()))
    return g.eval(), cfg


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "generator.pt"
    g, cfg = make_generator(path)
    return path, g, cfg


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_npy_and_png_outputs(gen, tmp_path, capsys):
    path, _, _ = gen
    code, out, _ = run(capsys, "--generator", path, "--digit", 7, "--n", 12, "--seed", 3, "--out", tmp_path / "a.npy")
    assert code == 0 and "12 images of digit 7 (seeds 3-14)" in out
    images = np.load(tmp_path / "a.npy")
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8 and images.std() > 0
    code, _, _ = run(
        capsys,
        "--generator",
        path,
        "--digit",
        7,
        "--n",
        12,
        "--seed",
        3,
        "--nrow",
        4,
        "--scale",
        2,
        "--out",
        tmp_path / "a.png",
    )
    assert code == 0
    png = np.asarray(Image.open(tmp_path / "a.png"))
    # 3 rows of 4 images of 28 px with 2-px gaps, each pixel repeated twice
    assert png.shape == (2 * (3 * 30 + 2), 2 * (4 * 30 + 2))
    assert (png[2 * 2 : 2 * 30, 2 * 2 : 2 * 30][::2, ::2] == images[0]).all()  # the first image, top left


def test_reproducible_by_seed_and_each_image_depends_on_its_own_seed_only(gen, tmp_path, capsys):
    path, _, _ = gen
    run(capsys, "--generator", path, "--digit", 3, "--n", 20, "--seed", 100, "--out", tmp_path / "a.npy")
    run(capsys, "--generator", path, "--digit", 3, "--n", 20, "--seed", 100, "--out", tmp_path / "b.npy")
    run(capsys, "--generator", path, "--digit", 3, "--n", 1, "--seed", 113, "--out", tmp_path / "one.npy")
    a, b, one = (np.load(tmp_path / f"{n}.npy") for n in ("a", "b", "one"))
    assert a.tobytes() == b.tobytes()
    assert one[0].tobytes() == a[13].tobytes()  # image i of a request is seed SEED+i, whatever else is asked
    assert len({img.tobytes() for img in a}) == 20  # every seed gives another image


def test_digit_truncation_and_any(gen):
    _, g, cfg = gen
    seeds = np.arange(8)
    sevens = digits_from_seeds(g, cfg.z_dim, True, np.full(8, 7), seeds)
    ones = digits_from_seeds(g, cfg.z_dim, True, np.full(8, 1), seeds)
    cut = digits_from_seeds(g, cfg.z_dim, True, np.full(8, 7), seeds, truncation=0.5)
    assert not np.array_equal(sevens, ones) and not np.array_equal(sevens, cut)
    anys = digits_from_seeds(g, cfg.z_dim, True, np.full(8, -1), seeds)
    # "any" draws the label from the seed, after the same noise: each image equals one of the ten digits'
    per_digit = [digits_from_seeds(g, cfg.z_dim, True, np.full(8, d), seeds) for d in range(10)]
    for i in range(8):
        assert any(np.array_equal(anys[i], per_digit[d][i]) for d in range(10))


def test_unconditional_generator_takes_any_digit_only(tmp_path, capsys):
    path = tmp_path / "uncond.pt"
    make_generator(path, conditional=False)
    code, _, _ = run(capsys, "--generator", path, "--n", 4, "--out", tmp_path / "any.npy")
    assert code == 0 and np.load(tmp_path / "any.npy").shape == (4, 28, 28)
    code, _, err = run(capsys, "--generator", path, "--digit", 7, "--out", tmp_path / "seven.npy")
    assert code == 2 and "unconditional" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "seven.npy").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--digit", "10"], "--digit 10 is out of range; allowed 0-9, or -1 for any"),
        (["--digit", "-2"], "--digit -2 is out of range"),
        (["--n", "0"], "--n 0: must be at least 1"),
        (["--truncation", "-1"], "--truncation -1.0"),
        (["--out", "x.jpg"], "unknown suffix '.jpg'"),
        (["--generator", "missing.pt"], "missing.pt: file not found"),
        (["--generator", "corrupt.pt"], "corrupt.pt: corrupt or unreadable torch file"),
        (["--generator", "other.pt"], "other.pt: not a generator file"),
        (["--digit", "seven"], "argument --digit: invalid int value: 'seven'"),
        (["--generator", "g.pt", "--model-uri", "models:/x/1"], "not allowed with argument"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    save_torch(tmp_path / "other.pt", {"format": "something else"})
    argv = ["--out", "out.npy", *args] if "--out" not in args else args
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out.npy").exists()


def test_default_generator_path_names_the_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "--out", "a.png")
    assert code == 2 and "models/generator.pt: file not found; rerun the train stage" in err


ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models/generator.pt", ROOT / "models/classifier.pt"


@pytest.mark.skipif(not all(p.exists() for p in TRAINED), reason="needs the default run's models (make repro)")
def test_the_trained_generators_sevens_are_sevens(tmp_path, capsys):
    """After `make repro`: 100 sevens asked of the trained generator, read by the project's classifier."""
    from mnistgan.evaluation.classifier import check_classifier_file, classifier_from_file
    from mnistgan.gan.sample import check_generator_file
    from mnistgan.io import load_torch
    from mnistgan.tensors import to_unit_range

    if not load_torch(TRAINED[0], check=check_generator_file)["train_config"]["conditional"]:
        pytest.skip("the trained generator is unconditional")
    code, _, _ = run(capsys, "--generator", TRAINED[0], "--digit", 7, "--n", 100, "--out", tmp_path / "sevens.npy")
    assert code == 0
    clf = classifier_from_file(load_torch(TRAINED[1], check=check_classifier_file))
    with torch.no_grad():
        read = clf(to_unit_range(torch.from_numpy(np.load(tmp_path / "sevens.npy")))).argmax(1)
    assert int((read == 7).sum()) >= 95, np.bincount(read.numpy(), minlength=10)
