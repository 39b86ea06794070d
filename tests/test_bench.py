"""mnistgan.bench: FLOP counting, the generated markdown section, and a tiny end-to-end run on the CPU."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from mnistgan import bench, cli, models
from mnistgan.classifier import Classifier
from mnistgan.data import MNIST


def test_large_model_costs_the_figure_counted_by_hand():
    """By hand: G 96.7 M and D 5.9 M multiply-adds per image, 0.69 GFLOP per training image."""
    macs = bench.gan_macs("dcgan-large", d_norm="batch")
    assert macs["g"] == pytest.approx(96.7e6, rel=1e-3)
    assert macs["d"] == pytest.approx(5.9e6, rel=0.01)
    assert bench.train_flops_per_image(macs["g"], macs["d"]) == pytest.approx(0.69e9, rel=0.02)
    layers = dict(macs["g_layers"])
    assert layers["dense.6"] == 1024 * 7 * 7 * 256  # the dense 1024 -> 12544 layer: 12.8 M
    assert layers["conv.0"] == 256 * 7 * 7 * 128 * 5 * 5  # convT 256 -> 128, 5x5, on 7x7 inputs: 40.1 M
    assert dict(macs["d_layers"])["features.0"] == 32 * 14 * 14 * 5 * 5  # conv 1 -> 32, 5x5 s2 -> 14x14


def test_layer_macs_by_hand():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    rows = bench.count_macs(conv, torch.zeros(2, 4, 10, 10))
    assert rows == [("", 2 * 8 * 10 * 10 * (4 // 2) * 9)]
    convt = nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1)
    assert bench.count_macs(convt, torch.zeros(1, 3, 7, 7)) == [("", 3 * 7 * 7 * 5 * 16)]
    lin = nn.Linear(6, 7)
    assert bench.count_macs(lin, torch.zeros(3, 6)) == [("", 3 * 6 * 7)]


def test_train_flops_formula():
    assert bench.train_flops_per_image(10.0, 1.0) == pytest.approx(6 * (10 + 3 * 1))
    # d_steps = 2: G forward twice and backward once; D forward+backward 5 times; per 2B images.
    assert bench.train_flops_per_image(10.0, 1.0, d_steps=2) == pytest.approx(2 * (4 * 10 + 15 * 1) / 2)


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
    return MNIST(x_train=digits[y_train] | noise(256), y_train=y_train, x_test=digits[y_test] | noise(128),
                 y_test=y_test)  # fmt: skip


@pytest.fixture
def tiny_model(monkeypatch):
    """A dcgan-small eight times narrower, registered as model "tiny" for the duration of a test."""
    monkeypatch.setitem(models.MODELS, "tiny", (lambda z, c, w: models.SmallGenerator(z, c, width=8),
                                                lambda n, c, w: models.small_discriminator(n, c, width=8)))  # fmt: skip
    return "tiny"


def test_bench_quick_smoke_on_the_cpu(tiny_model):
    """Every section end to end with tiny sizes (and a narrow dcgan-small), in well under a minute."""
    settings = bench.BenchSettings(
        model="tiny", batch_sizes=(8,), variants=("plain", "fast"), window_s=0.0, windows=1, min_steps=2,
        n_data=64, matmul_n=64, ttq_max_s=0.5, ttq_check_every_s=0.0, ttq_samples=64, metric_samples=64,
        use_cache=False, ttq_recipe=(("model", "tiny"), ("batch_size", 16), ("log_every", 2)), parity_steps=3,
        sections=("throughput", "ttq", "parity", "metrics"),
    )  # fmt: skip
    lines: list[str] = []
    t = time.perf_counter()
    mnist = _tiny_mnist()
    result = bench.run_bench(settings, torch.device("cpu"), mnist=mnist, classifier=Classifier().eval(),
                             notes=["tiny"], log=lines.append)  # fmt: skip
    assert time.perf_counter() - t < 60
    rows = result["throughput"]["rows"]
    assert [(r["variant"], r["batch"]) for r in rows] == [("plain", 8), ("fast", 8)]
    assert all(r["finite"] and r["images_per_s"] > 0 and r["tflops"] > 0 for r in rows)
    macs = bench.gan_macs("tiny", conditional=True)  # the TrainConfig default recipe is conditional
    assert result["throughput"]["flops_per_image"] == pytest.approx(6 * (macs["g"] + 3 * macs["d"]))
    ttq = result["time_to_quality"]
    assert ttq["checks"] and ttq["checks"][0]["step"] == 2 and np.isfinite(ttq["reference_fid"])
    assert ttq["target_fid"] == pytest.approx(3 * ttq["reference_fid"])
    par = result["parity"]
    assert [r["variant"] for r in par["rows"]] == ["plain", "fast"] and par["fast_options"]["autocast"]
    assert all(r["steps"] == 3 and np.isfinite(r["fid_g"]) and np.isfinite(r["fid_ema"]) for r in par["rows"])
    ms = result["metric_suite"]
    assert ms["n"] == 64 and ms["score_seconds"] > 0 and not ms["real_features_cached"]
    md = bench.render_markdown(result, "python -m mnistgan.bench --quick")
    assert "| plain | 8 |" in md and "| fast | 8 |" in md and "Time to quality" in md and "tiny" in md
    assert "| plain | 3 |" in md and "| fast | 3 |" in md  # the parity table
    assert any("FID" in line for line in lines)


def test_throughput_one_variant_at_a_time(tiny_model):
    """The GPU mode (interleave off): each variant built, timed and freed in turn."""
    settings = bench.BenchSettings(model=tiny_model, batch_sizes=(4, 8), variants=("fast", "plain"), window_s=0.0,
                                   windows=2, n_data=32, interleave=False)  # fmt: skip
    tp = bench.throughput(torch.device("cpu"), settings, 0.0, lambda s: None)
    assert [(r["variant"], r["batch"]) for r in tp["rows"]] == [("fast", 4), ("plain", 4), ("fast", 8), ("plain", 8)]
    assert all(len(r["windows_s"]) == 2 and r["finite"] and r["matmul_share"] is None for r in tp["rows"])
    assert "| fast | 4 |" in bench.render_markdown({"meta": bench.machine_info(torch.device("cpu")), "throughput": tp,
                                                    "matmul": {"n": 1, "dtype": "float32", "tflops": 0.0}})  # fmt: skip


def test_sections_are_skipped_without_data():
    settings = bench.BenchSettings(sections=("ttq", "parity", "metrics"), matmul_n=32)
    result = bench.run_bench(settings, torch.device("cpu"), log=lambda s: None)
    assert result["time_to_quality"] == {"skipped": "no MNIST data"}
    assert result["parity"] == {"skipped": "no MNIST data"}
    assert result["metric_suite"] == {"skipped": "no MNIST data"}


def test_exported_data_loads_back(tmp_path):
    mnist = _tiny_mnist()
    path = tmp_path / "m.npz"
    bench.export_data(mnist, str(path))
    loaded, source = bench.load_bench_data(str(path))
    assert source == str(path)
    for name, array in mnist.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, name), array)


def test_settings_and_command_line(capsys):
    args = bench.build_parser().parse_args(["--quick", "--batch-sizes", "32,64", "--variants", "plain"])
    s = bench.settings_from_args(args, torch.device("cuda"))
    assert s.batch_sizes == (32, 64) and s.variants == ("plain",) and s.matmul_n == bench.CPU_SETTINGS.matmul_n
    assert bench.settings_from_args(bench.build_parser().parse_args([]), torch.device("cuda")) == bench.GPU_SETTINGS
    with pytest.raises(ValueError, match="unknown 'turbo'"):
        bench.settings_from_args(bench.build_parser().parse_args(["--variants", "turbo"]), torch.device("cpu"))
    assert "bench" in cli.COMMANDS and "score" in cli.COMMANDS
    assert cli.main(["bench", "--help"]) == 0
    assert "--markdown" in capsys.readouterr().out


def test_recipe_section_reports_rate_and_time_to_thresholds():
    """The CPU's quality-per-minute section on tiny data: one recipe, a short budget, its table row."""
    settings = bench.BenchSettings(sections=("recipes",), matmul_n=64, ttq_samples=64, recipes=("ema-warmup",),
                                   recipe_seconds=0.6, recipe_check_every_s=0.3)  # fmt: skip
    result = bench.run_bench(settings, torch.device("cpu"), mnist=_tiny_mnist(), classifier=Classifier().eval(),
                             log=lambda s: None)  # fmt: skip
    row = result["recipes"]["rows"][0]
    assert row["recipe"] == "ema-warmup" and row["steps"] > 0 and row["checks"]
    assert row["gflops"] == pytest.approx(row["images_per_second"] * row["flops_per_image"] / 1e9)
    assert row["matmul_share"] > 0
    assert all(f"s_to_{f}x" in row for f in (32, 16, 8))
    md = bench.render_markdown(result)
    assert "Quality per CPU-minute" in md and "| `ema-warmup` |" in md
