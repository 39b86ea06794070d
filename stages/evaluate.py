"""evaluate: every score of the samples on classifier features, each beside its real-data reference."""

from __future__ import annotations

from dataclasses import replace

from _common import Params, run_stage

from mnistgan import tracking
from mnistgan.classifier import check_classifier_file, classifier_from_file, features_and_probs
from mnistgan.data import load_mnist
from mnistgan.io import load_npy, load_torch, read_json, save_png, write_json
from mnistgan.metrics import mean_std_over_sets
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
    if cfg.seeds:  # more sample sets of the same generator: how much the scores move with the noise alone
        result["generated_over_seeds"] = scores_over_seeds(params, clf, mnist, real)
    write_json(paths.metrics_eval, result)
    sample_feats, _ = features_and_probs(clf, samples[:10])
    save_png(paths.nearest_png, nearest_training_grid(samples, sample_feats, mnist.x_train, real.train_feats), scale=3)
    run = tracking.reopen_run(params.tracking, read_json(paths.metrics_train, made_by="train").get("mlflow_run_id"))
    tracking.log_scores(run, result, read_json(paths.metrics_classifier, made_by="classifier"), paths.metrics_eval)
    run.log_artifact(paths.nearest_png)
    run.end()
    g, r = generated, reference
    if cfg.seeds:
        fid = result["generated_over_seeds"]["fid"]
        print(f"evaluate: FID over {len(cfg.seeds)} sample sets {fid['mean']:.3f} ± {fid['std']:.3f}")
    print(f"evaluate: score {g['inception_score']:.3f} (real {r['inception_score']:.3f}), "
          f"FID {g['fid']:.3f} (real {r['fid']:.3f}), classes {g['classes_covered']}/10")  # fmt: skip


def scores_over_seeds(params: Params, clf, mnist, real) -> dict:
    """Draw sample.n images for each of evaluate.seeds from the generator and score each set."""
    from mnistgan.sample import check_generator_file, generator_from_file, sample_images

    cfg, paths = params.evaluate, params.paths
    g, train_cfg = generator_from_file(load_torch(paths.generator, made_by="train", check=check_generator_file))
    n, bs = params.sample.n, params.sample.batch_size
    scores = []
    for seed in cfg.seeds:
        images = sample_images(g, n, train_cfg.z_dim, train_cfg.conditional, seed, bs)  # (n, 28, 28) uint8
        scores.append(score_images(images, clf, mnist, splits=cfg.splits, batch_size=cfg.batch_size, real=real))
    return {**mean_std_over_sets(scores), "seeds": list(cfg.seeds), "n_samples": params.sample.n}


if __name__ == "__main__":
    run_stage("evaluate", main)
