"""Where and how torch runs: the device, determinism, and the data-parallel process group (torchrun).

Pure set-up logic shared by the train stage and the training loop; no files, no MLflow.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda" without CUDA is an error that names the key."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but CUDA is not available; use auto or cpu")
    return torch.device(name)


def set_determinism(deterministic: bool, cuda: bool) -> None:
    """The one place that sets torch's determinism switches (the train stage calls it).

    deterministic: deterministic algorithms, no cuDNN autotuning; CUBLAS_WORKSPACE_CONFIG too, which takes
    effect only if cuBLAS has not started yet (call this early). Otherwise, on CUDA, cuDNN autotunes each
    convolution shape once (process-wide); the CPU needs neither.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif cuda:
        torch.backends.cudnn.benchmark = True


def relaunch_under_torchrun(script: str, nproc: int) -> int:
    """Run `nproc` copies of `script` under torchrun (they find each other through the environment it sets:
    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); returns its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        os.path.abspath(script),
    ]
    return subprocess.call(cmd)


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when started by torchrun."""
    device = resolve_device(device_name)
    if not under_torchrun():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(dist.destroy_process_group)
    return dist.get_rank(), dist.get_world_size(), device


def set_threads(threads: int, world: int, device: torch.device) -> None:
    """Data-parallel CPU processes share numerics.threads (or, at 0, the cores) evenly; a single process keeps
    the count mnistgan.numerics.apply set."""
    if world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (threads or os.cpu_count() or 1) // world))


def allreduce_grads(module: nn.Module, world: int) -> None:
    """Average gradients over data-parallel processes: one flat all-reduce per model.

    Done by hand rather than with DistributedDataParallel because a GAN step runs D several times before
    one backward, and WGAN-GP differentiates through D twice, which DDP's reducer does not support.
    """
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, avg in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(avg)


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True when `flag` holds on any process (a collective: every rank calls it at the same step)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of `values` over processes (a copy), so every rank sees the same loss row."""
    if world == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world


def gather_objects(obj: Any, world: int) -> list[Any]:
    """Every rank's `obj`, in rank order (a collective)."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out
