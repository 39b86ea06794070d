"""train: the GAN. Resumes from paths.checkpoint when it was made with the same params."""

from __future__ import annotations

import atexit
import csv
import io
import os
import signal
import subprocess
import sys

from _common import Params, run_stage

from mnistgan import tracking
from mnistgan.config import flatten, to_dict
from mnistgan.data import load_mnist, sha256
from mnistgan.io import InputError, atomic_path, load_torch, save_torch, write_json
from mnistgan.pictures import image_grid


def main(params: Params) -> int:
    cfg, paths = params.train, params.paths
    if params.tracking.required:
        # An unreachable store stops the stage in a second or two, before torch is imported and the data loaded.
        tracking.check_store(tracking.tracking_uri())
    if cfg.nproc > 1 and "LOCAL_RANK" not in os.environ:
        # Data-parallel: start train.nproc copies of this script under torchrun; they find each other
        # through the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
               os.path.abspath(__file__)]  # fmt: skip
        return subprocess.call(cmd)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA initialises
    import torch

    from mnistgan import train as core
    from mnistgan.tensors import to_unit_range

    rank, world, device = init_distributed(cfg, core)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # processes share the cores
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    data = load_mnist(paths.mnist)
    n = cfg.train_images or len(data.x_train)
    x = to_unit_range(torch.from_numpy(data.x_train[:n])).to(device)  # (n, 1, 28, 28) in [-1, 1]
    y = torch.from_numpy(data.y_train[:n]).long().to(device)  # (n,)

    state = core.build_state(cfg, params.seed, device, rank, world)
    # Rank 0 alone scores the generator during training; loaded before the run opens so a missing
    # classifier fails the stage at once.
    monitor = fid_monitor(params, data) if cfg.fid_every and rank == 0 else None
    run_id = resume(state, paths.checkpoint, core, verbose=rank == 0)
    lead = rank == 0  # only the first process logs and writes outputs
    run = (
        tracking.open_run(params.tracking.experiment, params.tracking.required, run_id=run_id)
        if lead
        else tracking.NullRun()
    )
    if lead and not run_id:
        run.log_params(flatten(params))
        digest = sha256(data.x_train)[:32]  # of the uint8 images (the full value is in mnistgan.data)
        run.log_dataset("mnist", data.x_train, data.y_train, source=os.path.abspath(paths.mnist), digest=digest,
                        context="training")  # fmt: skip
    run.set_tags(tracking.run_tags(str(device)) | ({"nproc": str(world)} if world > 1 else {}))

    stop = {"signal": None}

    def request_stop(signum: int, _frame: object) -> None:
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def on_checkpoint(step: int, ckpt: dict) -> None:
        ckpt["mlflow_run_id"] = run.run_id
        save_torch(paths.checkpoint, ckpt)

    try:
        result = core.train(
            state, x, y,
            on_log=lambda step, row: run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step),
            on_images=(lambda step, imgs: run.log_image(image_grid(imgs.numpy()), key="samples", step=step))
            if lead else None,
            on_checkpoint=on_checkpoint if lead else None,
            fid=monitor,
            on_fid=lambda step, value: run.log_metrics(
                {"fid_during_training": value, "fid_seconds": state.fid_history[-1]["seconds"]}, step=step),
            stop_requested=lambda: stop["signal"] is not None,
            progress=lead,
        )  # fmt: skip
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
    sampler = core.finalize_sampler(state, device)
    save_torch(paths.generator, core.generator_file(state, sampler))
    write_losses_csv(paths.train_losses, state.history)
    # Seconds stay out of the CSV (they differ from run to run; the CSV is byte-reproducible): MLflow has them.
    fid_rows = [{"step": r["step"], "fid": r["fid"], "fid_real": monitor.reference} for r in state.fid_history] \
        if monitor else []  # fmt: skip
    write_csv(paths.train_fid, ["step", "fid", "fid_real"], fid_rows)
    # mlflow_run_id: the sample and evaluate stages add their pictures and scores to this run.
    # seconds and images/s are the whole run's (over resumed processes); resumed_from_step > 0 says the
    # last process started from a checkpoint and how long it ran.
    summary = {"mlflow_run_id": run.run_id, "steps": result.steps, "seconds": round(result.seconds, 2),
               "device": result.device,
               "images_per_second": round(result.images_per_second, 1),
               "resumed_from_step": result.resumed_from,
               "seconds_this_process": round(result.seconds_this_process, 2),
               **({"fid_during_training": round(fid_rows[-1]["fid"], 4), "fid_during_training_real":
                   round(monitor.reference, 4), "fid_samples": cfg.fid_samples} if fid_rows else {}),
               **{f"final_{k}": round(v, 6) for k, v in result.final.items()}}  # fmt: skip
    write_json(paths.metrics_train, summary)
    run.log_metrics({"train_seconds": result.seconds, "images_per_second": result.images_per_second,
                     "train_steps": result.steps})  # fmt: skip
    run.log_artifact(paths.generator, "model")
    run.log_artifact(paths.train_losses)
    run.log_artifact(paths.train_fid)
    run.end()
    resumed = f"; resumed at step {result.resumed_from}, {result.seconds_this_process:.0f} s in this process" \
        if result.resumed_from else ""  # fmt: skip
    print(f"train: {result.steps} steps on {result.device} in {result.seconds:.0f} s "
          f"({result.images_per_second:.0f} images/s{resumed})")  # fmt: skip
    return 0


def init_distributed(cfg, core):
    """(rank, world size, device); joins the torchrun process group when started by torchrun."""
    import torch

    if "LOCAL_RANK" not in os.environ:
        return 0, 1, core.resolve_device(cfg.device)
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    device = core.resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(dist.destroy_process_group)
    return dist.get_rank(), dist.get_world_size(), device


def resume(state, path: str, core, verbose: bool = True) -> str | None:
    """Load the checkpoint at `path` into `state` when it was made with the same train params and seed;
    returns its MLflow run id so the same run continues."""
    if not os.path.exists(path):
        return None
    try:
        ckpt = load_torch(path)
    except InputError as e:
        if verbose:
            print(f"train: {e}; starting fresh", file=sys.stderr)
        return None
    same = ckpt.get("train_config") == to_dict(state.cfg) and ckpt.get("seed") == state.seed
    if not same:
        old = ckpt.get("train_config") or {}
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in to_dict(state.cfg).items() if old.get(k) != v]
        if ckpt.get("seed") != state.seed:
            diff.append(f"seed {ckpt.get('seed')!r} -> {state.seed!r}")
        if verbose:
            print(f"train: {path} was made with other params ({', '.join(diff)}); starting fresh", file=sys.stderr)
        return None
    core.restore(state, ckpt)
    if verbose:
        print(f"train: resuming from {path} at step {state.step}", file=sys.stderr)
    return ckpt.get("mlflow_run_id") or None


def fid_monitor(params: Params, data):
    """The FID-during-training scorer: fid_samples generated images against the test set, and as many
    real training images (the last ones) scored the same way as the floor at that sample size."""
    from mnistgan.classifier import check_classifier_file, classifier_from_file
    from mnistgan.monitor import FidMonitor

    cfg = params.train
    clf = classifier_from_file(load_torch(params.paths.classifier, made_by="classifier", check=check_classifier_file))
    if cfg.fid_samples > len(data.x_train):
        raise InputError(f"train.fid_samples: {cfg.fid_samples} is more than the {len(data.x_train)} training images")
    return FidMonitor(clf, data.x_test, data.x_train[-cfg.fid_samples :], cfg.fid_samples, cfg.z_dim, cfg.conditional,
                      seed=params.seed + 3, recalibrate=cfg.ema > 0)  # fmt: skip


def write_losses_csv(path: str, history: list[dict]) -> None:
    from mnistgan.train import LOSS_COLUMNS

    write_csv(path, ["step", *LOSS_COLUMNS], history)


def write_csv(path: str, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


if __name__ == "__main__":
    run_stage("train", main)
