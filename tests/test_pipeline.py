"""End to end: the real DVC pipeline on a tiny configuration in a temporary copy of this checkout."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import yaml
from pipeline_utils import BIN, TINY, copy_repo, deep_update, dvc, env, render_in_chromium, require_chromium, run
from schema_utils import schema_problems

pytestmark = pytest.mark.slow
RECORD_ENV = "MNISTGAN_RECORD_PARAMS"  # stages/_common.py: each stage writes the params keys it read
# FID during training (off in TINY to save time elsewhere), discriminator rejection sampling, and two extra
# sample sets scored by evaluate (evaluate.seeds: mean and std over them in eval.json), drawn the same way.
FID_AND_SEEDS = {
    "train": {"fid_every": 60, "fid_samples": 300},
    "sample": {"drs_percentile": 50.0},
    "evaluate": {"seeds": [5, 6], "spaces": ["classifier/penultimate", "classifier/blocks", "extractor/blocks"]},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo", deep_update(copy.deepcopy(TINY), FID_AND_SEEDS))
    # every stage records the params keys it reads (see test_every_params_key_a_stage_reads_is_declared)
    dvc(["repro"], root, extra_env={RECORD_ENV: str(root.parent / "reads")})
    return root


def mlflow_runs(root):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow, mlflow.search_runs(experiment_names=["mnistgan"], output_format="pandas")


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_every_output_is_there(repo):
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert (repo / "data/mnist" / f"{name}.npy").exists()
    samples = np.load(repo / "data/samples.npy")
    assert samples.shape == (TINY["sample"]["n"], 28, 28) and samples.dtype == np.uint8
    assert samples.std() > 0  # not a constant image
    from PIL import Image

    png = Image.open(repo / "plots/samples.png")
    assert png.size == (3 * (10 * 30 + 2), 3 * (10 * 30 + 2))
    clf = json.loads((repo / "metrics/classifier.json").read_text())
    assert 0.5 < clf["test_accuracy"] <= 1.0  # a tiny run, but it learned something
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["steps"] == TINY["train"]["steps"] and train["device"] == "cpu" and train["images_per_second"] > 0
    rows = list(csv.DictReader((repo / "metrics/train_losses.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == list(range(10, 121, 10))
    fid_rows = list(csv.DictReader((repo / "metrics/train_fid.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in fid_rows] == [60, 120]  # train.fid_every 60 of 120 steps
    # the floor: fid_inf of as many random real images, about 0 (an extrapolation: it can dip below), under the GAN
    assert all(abs(float(r["fid_inf_real"])) < 3 < float(r["fid_inf_generated"]) for r in fid_rows)
    assert train["fid_during_training"] == pytest.approx(float(fid_rows[-1]["fid_inf_generated"]), rel=1e-4)
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert schema_problems(ev) == []  # every key as docs/scores.md describes it
    for part in ("generated", "real_reference"):
        for key in ("inception_score", "inception_score_std", "fid"):
            assert np.isfinite(ev[part][key])
    # The real reference is far better than a 120-step GAN: the reference gives the scale.
    assert ev["real_reference"]["fid"] < ev["generated"]["fid"]
    assert ev["n_reference"] == ev["real_reference"]["n_samples"] == TINY["sample"]["n"] == 600
    spaces = ev["feature_spaces"]
    assert sorted(spaces) == sorted(FID_AND_SEEDS["evaluate"]["spaces"])
    assert all(v["fid_multiple"] > 1 for v in spaces.values())
    assert ev["agreement"]["n_spaces"] == 3 and ev["agreement"]["fid_multiple_spread"] >= 0
    assert spaces["extractor/blocks"]["identity"]["arch"] == "deep" and ev["headline_features"]["arch"] == "lenet"
    over = ev["generated_over_seeds"]
    assert over["seeds"] == [5, 6] and over["n_samples"] == TINY["sample"]["n"]
    for key in ("fid", "inception_score", "precision", "recall", "classes_covered"):
        assert np.isfinite(over[key]["mean"]) and over[key]["std"] >= 0, key
    assert over["fid"]["std"] > 0  # two different noise draws do not score exactly alike
    # Same generator, other noise: within a factor of two of the sample stage's set.
    assert 0.5 < over["fid"]["mean"] / ev["generated"]["fid"] < 2


def test_every_params_key_a_stage_reads_is_declared(repo):
    """The keys each stage really read in the run (recorded through the config objects) are all in its
    dvc.yaml params: a key read but not declared would not rerun the stage when it changes."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    reads_dir = repo.parent / "reads"
    for name, stage in stages.items():
        if name == "check":  # it declares (and validates) the whole file
            continue
        reads = set(json.loads((reads_dir / f"{name}.json").read_text()))
        assert reads, f"{name}: no params read recorded"
        declared = {p for p in stage.get("params", []) if isinstance(p, str)}
        assert reads <= declared, f"{name} reads params keys dvc.yaml does not declare: {sorted(reads - declared)}"
    # a key that only some branches read still shows up when it is read: the train stage read its loss
    assert "train.loss" in json.loads((reads_dir / "train.json").read_text())


def test_every_file_a_stage_opens_is_declared(repo):
    """The files of the checkout each stage really opened for reading in the run (a Python audit hook) are
    all in its dvc.yaml deps or outputs: a file read but not declared would not rerun the stage when it
    changes. params.yaml is held per key above, the code by test_dvc_yaml's import check."""
    from mnistgan.lab.clone import resolve

    params = yaml.safe_load((repo / "params.yaml").read_text())
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    # params.yaml: held per key above; code: test_dvc_yaml's import check; .git: MLflow reads the commit for its tags
    code = lambda f: f == "params.yaml" or f.endswith((".py", ".pyc")) or f.startswith(".git/")  # noqa: E731
    for name, stage in stages.items():
        opened = {f for f in json.loads((repo.parent / "reads" / f"{name}.files.json").read_text()) if not code(f)}
        declared = set(stage.get("deps", []))
        for section in ("outs", "metrics", "plots"):
            declared |= {p for e in stage.get(section, []) for p in (e if isinstance(e, dict) else [e])}
        declared = {resolve(str(d), params).rstrip("/") for d in declared}
        undeclared = {f for f in opened if not any(f == d or f.startswith(d + "/") for d in declared)}
        assert not undeclared, f"{name} opened files dvc.yaml does not list: {sorted(undeclared)}"
    # the record is real: evaluate opened the samples and the run id's file
    evaluate = set(json.loads((repo.parent / "reads" / "evaluate.files.json").read_text()))
    assert {"data/samples.npy", "metrics/train.json"} <= evaluate


def test_second_repro_reruns_nothing_and_status_is_clean(repo):
    out = dvc(["repro"], repo).stdout
    assert "Running stage" not in out
    for stage in ("prepare", "classifier", "extractor", "train", "sample", "evaluate"):
        assert f"'{stage}' didn't change" in out
    status = dvc(["status"], repo).stdout
    assert "up to date" in status


def test_mlflow_run_holds_params_losses_images_scores_and_tags(repo):
    mlflow, runs = mlflow_runs(repo)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert float(run["params.train.steps"]) == TINY["train"]["steps"]
    assert run["params.train.loss"] == yaml.safe_load((repo / "params.yaml").read_text())["train"]["loss"]
    assert run["tags.git_commit"] != "unknown" and len(run["tags.git_commit"]) == 40
    assert run["tags.device"] == "cpu" and run["tags.torch_version"]
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run["run_id"], "loss_d")
    assert [m.step for m in history] == list(range(10, 121, 10))
    assert [m.step for m in client.get_metric_history(run["run_id"], "fid_during_training")] == [60, 120]
    ev = flat(json.loads((repo / "metrics/eval.json").read_text()))
    for key, value in ev.items():
        if key == "generated_over_seeds.seeds":  # a list: the params hold it (evaluate.seeds)
            continue
        if isinstance(value, str):  # where the features came from: tags
            assert run[f"tags.{key}"] == value, key
            continue
        if key.endswith("_ci95"):  # an interval: two metrics
            assert [run[f"metrics.{key}_low"], run[f"metrics.{key}_high"]] == pytest.approx(value, rel=1e-9), key
            continue
        assert run[f"metrics.{key}"] == pytest.approx(value, rel=1e-9), key
    assert len(run["tags.headline_features.weights_sha256"]) == 16  # the headline scores' classifier, by its weights
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"images", "model", "samples.png", "eval.json", "train_losses.csv", "train_fid.csv"} <= artifacts
    images = {
        a.path.split("/")[-1].split("+")[0] + "@" + a.path.split("+")[2]
        for a in client.list_artifacts(run["run_id"], "images")
        if a.path.endswith(".png")
    }
    assert {"samples@60", "samples@120", "final_samples@120"} <= images
    # The description the UI shows, and the generator as a registered model tagged with the run's scores
    note = run["tags.mlflow.note.content"]
    assert "the commit's params.yaml, unchanged" in note and f"FID {ev['generated.fid']:.2f}" in note, note
    (version,) = client.search_model_versions("name='mnistgan-generator'")
    assert version.run_id == run["run_id"] and float(version.tags["fid"]) == pytest.approx(ev["generated.fid"], 1e-3)


def test_dvc_exp_run_logs_a_second_tagged_run(repo):
    out = dvc(["exp", "run", "-n", "lr-test", "-S", "train.lr=0.0005"], repo).stdout
    assert "Running stage 'train'" in out and "Running stage 'classifier'" not in out
    mlflow, runs = mlflow_runs(repo)
    assert len(runs) == 2
    tagged = runs[runs["tags.dvc_exp_name"] == "lr-test"]
    assert len(tagged) == 1 and float(tagged.iloc[0]["params.train.lr"]) == 0.0005
    assert tagged.iloc[0]["status"] == "FINISHED"
    assert "changed train.lr=0.0005" in tagged.iloc[0]["tags.mlflow.note.content"]
    client = mlflow.MlflowClient()
    latest = max(client.search_model_versions("name='mnistgan-generator'"), key=lambda v: int(v.version))
    assert int(latest.version) == 2 and latest.run_id == tagged.iloc[0]["run_id"] and "fid" in latest.tags
    shown = dvc(["exp", "show", "--json"], repo).stdout
    assert "lr-test" in shown


def test_compare_report_of_the_two_runs(repo):
    run(
        [str(BIN / "python"), "-m", "mnistgan.lab.report", "compare", "--out", "reports"],
        repo,
        env={**env(), "PYTHONPATH": str(repo / "src")},
    )
    md = (repo / "reports/compare.md").read_text()
    assert "lr-test" in md and "| train.lr |" in md  # the differing parameter is shown
    assert "| fid |" in md and "real reference" in md
    page = (repo / "reports/compare.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # loss curves + one grid per run, embedded


def test_bad_override_fails_with_one_line(repo):
    p = dvc(["exp", "run", "-S", "train.loss=wgan"], repo, check=False)
    assert p.returncode != 0
    assert "train.loss: unknown value 'wgan'; allowed: minimax, ns, lsgan, hinge, wgan-gp" in p.stdout + p.stderr


def test_compare_report_renders_in_headless_chromium(repo, tmp_path):
    require_chromium()  # CI installs Debian's chromium and sets MNISTGAN_REQUIRE_CHROMIUM=1: there it never skips
    page = repo / "reports/compare.html"
    if not page.exists():  # when this test runs alone
        run(
            [str(BIN / "python"), "-m", "mnistgan.lab.report", "compare", "--out", "reports"],
            repo,
            env={**env(), "PYTHONPATH": str(repo / "src")},
        )
    seen, shot = render_in_chromium(page, tmp_path)
    assert seen["tables"] == 4  # differing params, final scores, verdicts from their intervals, training
    assert "within noise" in seen["cells"] or "better" in seen["cells"] or "worse" in seen["cells"]
    assert "train.lr" in seen["cells"] and "fid" in seen["cells"] and "real reference" in seen["cells"]
    assert len(seen["images"]) == 3  # training curves and two sample grids
    for img in seen["images"]:
        assert img["decoded"] and img["width"] > 100 and img["shown"] > 100, img
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1400)
    assert (pixels < 64).mean() > 0.01  # dark pixels: text, the curves' axes and the digit grids' background
