"""sample: sample.n images from the trained generator (fixed seed) and a 10x10 picture of them."""

from __future__ import annotations

import numpy as np
from _common import Params, run_stage

from mnistgan import tracking
from mnistgan.gan.rejection import MAX_ROUNDS, discriminator_from_checkpoint, draw_samples
from mnistgan.gan.sample import check_generator_file, generator_from_file, interpolation_images
from mnistgan.io import load_torch, read_json, save_npy, save_png
from mnistgan.pictures import by_class_grid, image_grid


def main(params: Params) -> None:
    cfg, paths = params.sample, params.paths
    gen_file = load_torch(paths.generator, made_by="train", check=check_generator_file)
    g, train_cfg = generator_from_file(gen_file)
    d = None
    if cfg.drs_percentile > 0:  # the run's own discriminator judges the samples
        d = discriminator_from_checkpoint(load_torch(paths.checkpoint, made_by="train"), gen_file, paths.checkpoint)
    images, drs = draw_samples(g, d, cfg, train_cfg, cfg.seed)
    if drs is not None:
        print(
            f"sample: discriminator rejection sampling kept {drs.accepted} of {drs.proposals} proposals "
            f"({drs.acceptance:.0%}; burn-in {drs.burn_in}, {drs.forced} kept after {MAX_ROUNDS} tries)"
        )
    save_npy(paths.samples, images)  # (n, 28, 28) uint8
    # Conditional samples cycle through labels 0..9 (sample_noise), so row r of the grid is digit r.
    grid = by_class_grid(images, np.arange(cfg.n) % 10) if train_cfg.conditional else image_grid(images[:100])
    save_png(paths.samples_png, grid, scale=3)
    walk = image_grid(interpolation_images(g, train_cfg.z_dim, train_cfg.conditional, cfg.seed + 1))
    save_png(paths.interpolation_png, walk, scale=3)
    run = tracking.reopen_run(params.tracking, read_json(paths.metrics_train, made_by="train").get("mlflow_run_id"))
    run.log_image(grid, key="final_samples", step=gen_file["step"])  # steps trained (max_seconds may stop early)
    run.log_artifact(paths.samples_png)
    run.log_artifact(paths.interpolation_png)
    run.end()
    print(f"sample: {cfg.n} images -> {paths.samples}, pictures -> {paths.samples_png}, {paths.interpolation_png}")


if __name__ == "__main__":
    run_stage("sample", main)
