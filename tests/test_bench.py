"""mnistgan.lab.bench: the generated markdown section, the command line, and tiny end-to-end runs on the CPU."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mnistgan import cli
from mnistgan.data import MNIST
from mnistgan.errors import UserError
from mnistgan.evaluation.classifier import Classifier, DeepClassifier
from mnistgan.gan import models
from mnistgan.lab import bench, flops


def test_update_markdown_rewrites_only_its_own_section():
    text = "# Benchmarks\n\nintro\n"
    once = bench.update_markdown(text, "cpu", "table one\n")
    assert once.startswith(text) and "<!-- bench:cpu:begin -->\ntable one\n<!-- bench:cpu:end -->" in once
    both = bench.update_markdown(once, "gpu", "gpu table\n")
    again = bench.update_markdown(both, "cpu", "table two\n")
    assert "table one" not in again and "table two" in again and "gpu table" in again
    assert again.count("bench:cpu:begin") == 1 and again.index("table two") < again.index("gpu table")
    assert again.endswith("<!-- bench:gpu:end -->\n")


def _tiny_mnist() -> MNIST:
    rng = np.random.default_rng(0)
    digits = np.zeros((10, 28, 28), np.uint8)
    for k in range(10):
        digits[k, 4 + 2 * k : 8 + 2 * k, 6:22] = 255  # a bar whose height encodes the label
    y_train, y_test = rng.integers(0, 10, 256).astype(np.uint8), rng.integers(0, 10, 128).astype(np.uint8)
    noise = lambda n: rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)  # noqa: E731
    return MNIST(
        x_train=digits[y_train] | noise(256), y_train=y_train, x_test=digits[y_test] | noise(128), y_test=y_test
    )


@pytest.fixture
def tiny_model(monkeypatch):
    """A dcgan-small eight times narrower, registered as model "tiny" for the duration of a test."""
    monkeypatch.setitem(
        models.MODELS,
        "tiny",
        (
            lambda z, c, w, up: models.SmallGenerator(z, c, width=8, upsample=up),
            lambda n, c, w: models.small_discriminator(n, c, width=8),
        ),
    )
    return "tiny"


def test_bench_quick_smoke_on_the_cpu(tiny_model):
    """Every section end to end with tiny sizes (and a narrow dcgan-small), in well under a minute."""
    settings = bench.BenchSettings(
        model="tiny",
        batch_sizes=(8,),
        window_s=0.0,
        windows=1,
        min_steps=2,
        n_data=64,
        matmul_n=64,
        metric_samples=64,
        sections=tuple(s for s in bench.SECTIONS if s != "numerics"),
    )
    lines: list[str] = []
    t = time.perf_counter()
    models = {"classifier": Classifier().eval(), "extractor": DeepClassifier().eval()}
    result = bench.run_bench(settings, torch.device("cpu"), mnist=_tiny_mnist(), models=models, log=lines.append)
    assert time.perf_counter() - t < 60
    rows = result["throughput"]["rows"]
    assert [r["batch"] for r in rows] == [8]
    assert all(r["finite"] and r["images_per_s"] > 0 and r["tflops"] > 0 for r in rows)
    macs = flops.gan_macs("tiny", conditional=True)  # the TrainConfig default recipe is conditional
    assert result["throughput"]["flops_per_image"] == pytest.approx(6 * (macs["g"] + 3 * macs["d"]))
    ms = result["metrics"]
    assert ms["n"] == 64 and ms["score_seconds"] > 0 and ms["networks"] == ["classifier", "extractor"]
    assert len(ms["spaces"]) == 4
    md = bench.render_markdown(result, "python -m mnistgan.lab.bench --quick")
    assert "| 8 |" in md and "Quality per" not in md and "Parity" not in md
    assert "Metric suite" in md and "4 feature spaces" in md


def test_numerics_section_times_each_mode_in_processes_of_its_own():
    settings = bench.BenchSettings(sections=("numerics",), numerics_rounds=1, numerics_steps=2, numerics_images=256)
    lines: list[str] = []
    result = bench.run_bench(settings, torch.device("cpu"), log=lines.append)
    nm = result["numerics"]
    assert [r["stage"] for r in nm["rows"]] == ["train", "classifier", "features"]
    assert all(r["native"] > 0 and r["portable"] > 0 for r in nm["rows"])
    # the fingerprint says which path each mode's libraries took
    assert (
        nm["fingerprints"]["portable"]["mkl"] == "COMPATIBLE" and nm["fingerprints"]["native"]["numerics"] == "native"
    )
    assert any(line.startswith("  round 1 portable: train ") for line in lines)
    md = bench.render_markdown(result)
    assert "**Numerics**" in md and "| train |" in md and "portable costs" in md
    assert "<!-- bench:numerics:begin -->" in bench.update_markdown("# B\n", "numerics", md)


def test_throughput_times_each_batch_size_in_turn(tiny_model):
    """Each batch size built, timed in its windows and freed in turn."""
    settings = bench.BenchSettings(model=tiny_model, batch_sizes=(4, 8), window_s=0.0, windows=2, n_data=32)
    tp = bench.throughput(torch.device("cpu"), settings, 0.0, lambda s: None)
    assert [r["batch"] for r in tp["rows"]] == [4, 8]
    assert all(len(r["windows_s"]) == 2 and r["finite"] and r["matmul_share"] is None for r in tp["rows"])
    assert "| 4 |" in bench.render_markdown({"meta": bench.machine_info(torch.device("cpu")), "throughput": tp})


def test_sections_are_skipped_without_data():
    settings = bench.BenchSettings(sections=("metrics",))
    result = bench.run_bench(settings, torch.device("cpu"), log=lambda s: None)
    assert result["metrics"] == {"skipped": "no MNIST data"}
    assert "skipped metrics: no MNIST data" in bench.render_markdown(result)


def test_exported_data_loads_back(tmp_path, monkeypatch):
    mnist = _tiny_mnist()
    monkeypatch.setattr(
        bench,
        "load_bench_data",
        lambda path, real=bench.load_bench_data: (mnist, "tiny") if path is None else real(path),
    )
    path = tmp_path / "m.npz"
    assert bench.main(["--export-data", str(path)]) == 0
    loaded, source = bench.load_bench_data(str(path))
    assert source == str(path)
    for name, array in mnist.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, name), array)


def test_settings_and_command_line(capsys):
    args = bench.build_parser().parse_args(["--quick", "--batch-sizes", "32,64"])
    s = bench.settings_from_args(args, torch.device("cuda"))
    assert s.batch_sizes == (32, 64) and s.matmul_n == bench.CPU_SETTINGS.matmul_n
    assert bench.settings_from_args(bench.build_parser().parse_args([]), torch.device("cuda")) == bench.GPU_SETTINGS
    with pytest.raises(UserError, match="--sections: unknown 'ttq'"):
        bench.settings_from_args(bench.build_parser().parse_args(["--sections", "ttq"]), torch.device("cpu"))
    with pytest.raises(UserError, match="--sections: unknown 'recipes'"):  # how fast recipes get good: curves
        bench.settings_from_args(bench.build_parser().parse_args(["--sections", "recipes"]), torch.device("cpu"))
    assert "bench" in cli.COMMANDS and "score" in cli.COMMANDS
    assert cli.main(["bench", "--help"]) == 0
    assert "--markdown" in capsys.readouterr().out
