"""evaluate: every score of the samples, each beside the same score of as many real images, in every
feature space of evaluate.spaces (the classifier's and the second network's)."""

from __future__ import annotations

from dataclasses import replace

from _common import Params, run_stage

from mnistgan import tracking
from mnistgan.data import load_mnist
from mnistgan.evaluation.classifier import load_classifier
from mnistgan.evaluation.scoring import network_features, real_features, score_all
from mnistgan.evaluation.suite import mean_std_over_sets
from mnistgan.gan.rejection import discriminator_from_checkpoint, draw_samples
from mnistgan.gan.sample import check_generator_file, generator_from_file
from mnistgan.io import load_npy, load_torch, read_json, save_png, write_json
from mnistgan.pictures import nearest_training_grid


def main(params: Params) -> None:
    cfg, paths = params.evaluate, params.paths
    mnist = load_mnist(paths.mnist)
    if cfg.train_images:  # a smaller reference pool for quick runs: the last N training images
        mnist = replace(mnist, x_train=mnist.x_train[-cfg.train_images :], y_train=mnist.y_train[-cfg.train_images :])
    files = {"classifier": paths.classifier, "extractor": paths.extractor}
    needed = {"classifier"} | {space.split("/")[0] for space in cfg.spaces}
    models = {name: load_classifier(files[name], made_by=name) for name in sorted(needed)}
    reals = {
        name: real_features(m, mnist, batch_size=cfg.batch_size, progress=True, name=name) for name, m in models.items()
    }
    samples = load_npy(paths.samples, made_by="sample")
    common = {"n_reference": cfg.n_reference, "splits": cfg.splits, "batch_size": cfg.batch_size}
    result = score_all(samples, models, reals, cfg.spaces, progress=True, **common)
    if cfg.seeds:  # more sample sets of the same generator: how much the scores move with the noise alone
        result["generated_over_seeds"] = scores_over_seeds(params, models, reals, common)
    write_json(paths.metrics_eval, result)
    clf, real = models["classifier"], reals["classifier"]
    sample_feats = real.view(network_features(clf, samples[:10])[0], "penultimate")
    save_png(
        paths.nearest_png,
        nearest_training_grid(samples, sample_feats, mnist.x_train, real.train("penultimate")),
        scale=3,
    )
    run = tracking.reopen_run(params.tracking, read_json(paths.metrics_train, made_by="train").get("mlflow_run_id"))
    tracking.log_scores(run, result, read_json(paths.metrics_classifier, made_by="classifier"), paths.metrics_eval)
    run.log_artifact(paths.nearest_png)
    run.end()
    g, r, a = result["generated"], result["real_reference"], result["agreement"]
    if cfg.seeds:
        fid = result["generated_over_seeds"]["fid"]
        print(f"evaluate: FID over {len(cfg.seeds)} sample sets {fid['mean']:.3f} ± {fid['std']:.3f}")
    print(
        f"evaluate: score {g['inception_score']:.3f} (real {r['inception_score']:.3f}), FID {g['fid']:.3f} "
        f"(real {r['fid']:.3f} at N={result['n_reference']}), classes {g['classes_covered']}/10"
    )
    lo, hi = g["fid_inf_ci95"]
    print(
        f"evaluate: fid_inf {g['fid_inf']:.2f} [{lo:.2f}, {hi:.2f}] (real {r['fid_inf']:.2f}): "
        f"{g['fid_inf'] / r['fid_inf']:.1f}x real, for any number of samples"
    )
    if a:
        print(
            f"evaluate: FID multiples of real over {a['n_spaces']} feature spaces {a['fid_multiple_min']:.1f} to "
            f"{a['fid_multiple_max']:.1f} (spread {a['fid_multiple_spread']:.1f})"
        )


def scores_over_seeds(params: Params, models: dict, reals: dict, common: dict) -> dict:
    """Draw sample.n images for each of evaluate.seeds from the generator and score each set."""
    cfg, paths = params.evaluate, params.paths
    gen_file = load_torch(paths.generator, made_by="train", check=check_generator_file)
    g, train_cfg = generator_from_file(gen_file)
    d = None
    if params.sample.drs_percentile > 0:  # the sets are drawn as the sample stage draws its own
        d = discriminator_from_checkpoint(load_torch(paths.checkpoint, made_by="train"), gen_file, paths.checkpoint)
    scores = []
    for seed in cfg.seeds:
        images, _ = draw_samples(g, d, params.sample, train_cfg, seed)
        scores.append(score_all(images, models, reals, (), intervals=False, **common)["generated"])
    return {**mean_std_over_sets(scores), "seeds": list(cfg.seeds), "n_samples": params.sample.n}


if __name__ == "__main__":
    run_stage("evaluate", main)
