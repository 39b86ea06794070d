"""train: the GAN. Resumes from paths.checkpoint when it was made with the same params."""

from __future__ import annotations

import signal
import sys

from _common import Params, run_stage

from mnistgan import numerics, tracking
from mnistgan.data import load_mnist
from mnistgan.io import save_torch, write_csv, write_json


def main(params: Params) -> int:
    cfg, paths = params.train, params.paths
    if params.tracking.required:  # an unreachable store stops the stage in seconds, before torch loads
        tracking.check_store(tracking.tracking_uri())
    from mnistgan import runtime  # imports torch: only once the store answered

    if cfg.nproc > 1 and not runtime.under_torchrun():  # data-parallel: train.nproc copies of this script
        return runtime.relaunch_under_torchrun(__file__, cfg.nproc)
    runtime.set_determinism(cfg.deterministic, cuda=cfg.device != "cpu")  # cuDNN autotunes unless deterministic
    # torch comes in with these, after the store check and the torchrun relaunch above (deliberately lazy)
    from mnistgan.evaluation.classifier import load_classifier
    from mnistgan.evaluation.monitor import FidMonitor
    from mnistgan.gan import loop as core
    from mnistgan.gan.checkpoint import resume
    from mnistgan.gan.step import build_state
    from mnistgan.tensors import training_tensors

    rank, world, device = runtime.init_distributed(cfg.device)
    runtime.set_threads(params.numerics.threads, world, device)
    data = load_mnist(paths.mnist)
    n = cfg.train_images or len(data.x_train)
    x, y = training_tensors(data.x_train[:n], data.y_train[:n], device)  # (n, 1, 28, 28) in [-1, 1], (n,)
    state = build_state(cfg, params.seed, device, rank, world)
    lead = rank == 0  # only the first process scores, logs and writes outputs
    monitor = None
    if cfg.fid_every and lead:  # loaded before the run opens: a missing classifier fails the stage at once
        monitor = FidMonitor.for_config(load_classifier(paths.classifier), data, cfg, cfg.fid_samples, params.seed)
    run_id = resume(state, paths.checkpoint, log=lambda m: print(f"train: {m}", file=sys.stderr) if lead else None)
    platform = numerics.fingerprint(params.numerics.mode, str(device))  # metrics/platform.json and the run's tags
    run = tracking.open_training_run(params, data, run_id, platform, world) if lead else tracking.NullRun()
    stop: dict[str, str] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.setdefault("signal", signal.Signals(signum).name))

    def on_checkpoint(_step: int, ckpt: dict) -> None:
        save_torch(paths.checkpoint, ckpt | {"mlflow_run_id": run.run_id})

    hooks = {"stop_requested": lambda: bool(stop), "on_checkpoint": on_checkpoint if lead else None}
    try:
        callbacks = tracking.training_callbacks(run, state) if lead else {}
        result = core.train(state, x, y, fid=monitor, progress=lead, **hooks, **callbacks)
    except core.StopRequested as e:
        run.end("KILLED")
        print(f"train: {stop['signal']}: {e}; `dvc repro` resumes from {paths.checkpoint}", file=sys.stderr)
        return 130
    except core.DivergenceError as e:
        run.end("FAILED")
        print(f"train: error: {e}; the last good checkpoint is kept in {paths.checkpoint}", file=sys.stderr)
        return 3
    except BaseException:
        run.end("FAILED")
        raise
    if not lead:
        return 0
    save_torch(paths.generator, core.generator_file(state, core.finalize_sampler(state, device)))
    write_csv(paths.train_losses, ["step", *core.LOSS_COLUMNS], state.history)
    reference = monitor.reference if monitor else None
    write_csv(paths.train_fid, core.FID_COLUMNS, core.fid_rows(state, reference))
    write_json(paths.metrics_train, core.run_summary(result, state, run.run_id, reference))
    write_json(paths.platform, platform)
    run.log_metrics({"train_seconds": result.seconds, "images_per_second": result.images_per_second,
                     "train_steps": result.steps})  # fmt: skip
    run.log_artifact(paths.generator, "model")
    run.log_generator_model(paths.generator)  # an MLflow Model, registered as mnistgan-generator
    for artifact in (paths.train_losses, paths.train_fid, paths.platform):
        run.log_artifact(artifact)
    run.end()
    print(f"train: {result.summary()}")
    return 0


if __name__ == "__main__":
    run_stage("train", main)
