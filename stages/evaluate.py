"""evaluate: every score of the samples on classifier features, each beside its real-data reference."""

from __future__ import annotations

from dataclasses import replace

from _common import Params, run_stage

from mnistgan import tracking
from mnistgan.classifier import check_classifier_file, classifier_from_file, features_and_probs
from mnistgan.config import flatten
from mnistgan.data import load_mnist
from mnistgan.io import load_npy, load_torch, read_json, save_png, write_json
from mnistgan.pictures import nearest_training_grid
from mnistgan.score import real_features, reference_scores, score_images


def main(params: Params) -> None:
    cfg, paths = params.evaluate, params.paths
    mnist = load_mnist(paths.mnist)
    if cfg.train_images:  # a smaller reference pool for quick runs: the last N training images
        mnist = replace(mnist, x_train=mnist.x_train[-cfg.train_images :], y_train=mnist.y_train[-cfg.train_images :])
    clf = classifier_from_file(load_torch(paths.classifier, made_by="classifier", check=check_classifier_file))
    samples = load_npy(paths.samples, made_by="sample")
    real = real_features(clf, mnist, batch_size=cfg.batch_size, progress=True)  # shared by both scorings
    generated = score_images(samples, clf, mnist, splits=cfg.splits, batch_size=cfg.batch_size, real=real)
    reference = reference_scores(clf, mnist, n_reference=cfg.n_reference, splits=cfg.splits,
                                 batch_size=cfg.batch_size, real=real)  # fmt: skip
    result = {"generated": generated, "real_reference": reference}
    write_json(paths.metrics_eval, result)
    sample_feats, _ = features_and_probs(clf, samples[:10])
    save_png(paths.nearest_png, nearest_training_grid(samples, sample_feats, mnist.x_train, real.train_feats), scale=3)
    run = tracking.reopen_run(params.tracking, read_json(paths.metrics_train, made_by="train").get("mlflow_run_id"))
    run.log_metrics(flatten(result))
    run.log_metrics(flatten({"classifier": read_json(paths.metrics_classifier, made_by="classifier")}))
    run.log_artifact(paths.metrics_eval)
    run.log_artifact(paths.nearest_png)
    run.end()
    g, r = generated, reference
    print(f"evaluate: score {g['inception_score']:.3f} (real {r['inception_score']:.3f}), "
          f"FID {g['fid']:.3f} (real {r['fid']:.3f}), classes {g['classes_covered']}/10")  # fmt: skip


if __name__ == "__main__":
    run_stage("evaluate", main)
