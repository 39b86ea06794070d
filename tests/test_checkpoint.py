"""mnistgan.gan.checkpoint: what a checkpoint holds, when it may be resumed, and resuming from a file.

Exactness of a resumed run (same bytes as the uninterrupted one) is tested through the loop in test_loop.
"""

from __future__ import annotations

import dataclasses

import torch

from mnistgan.config import TrainConfig
from mnistgan.gan import checkpoint as ckpts
from mnistgan.gan import loop as core
from mnistgan.gan.step import GANState, build_state
from mnistgan.io import save_torch

CPU = torch.device("cpu")


def trained_state(cfg: TrainConfig, steps: int = 3, seed: int = 0) -> GANState:
    state = build_state(cfg, seed, CPU)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    core.train(state, x, y, progress=False)
    assert state.step == steps
    return state


CFG = TrainConfig(batch_size=8, steps=3, log_every=1, train_images=64)


def test_checkpoint_holds_the_state_and_restore_puts_it_back():
    state = trained_state(CFG)
    ckpt = ckpts.checkpoint(state)
    assert ckpt["format"] == ckpts.CHECKPOINT_FORMAT and ckpt["step"] == 3 and ckpt["seed"] == 0
    assert len(ckpt["history"]) == 3 and ckpt["train_seconds"] > 0
    fresh = build_state(CFG, 0, CPU)
    ckpts.restore(fresh, ckpt)
    assert fresh.step == 3 and fresh.history == state.history and fresh.seconds == state.seconds
    for a, b in ((state.g, fresh.g), (state.d, fresh.d), (state.g_ema, fresh.g_ema)):
        for (name, t), u in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(t, u), name
    # the loop's noise stream continues where it stopped
    assert torch.equal(torch.randn(4, generator=state.noise), torch.randn(4, generator=fresh.noise))


def test_differences_name_every_changed_key_and_the_seed():
    state = trained_state(CFG)
    ckpt = ckpts.checkpoint(state)
    assert ckpts.differences(ckpt, build_state(CFG, 0, CPU)) == []
    other = build_state(dataclasses.replace(CFG, lr=1e-3, batch_size=16), 5, CPU)
    diff = ckpts.differences(ckpt, other)
    assert diff == ["batch_size 8 -> 16", "lr 0.0004 -> 0.001", "seed 0 -> 5"], diff
    ckpt["train_config"]["retired_key"] = 1  # a checkpoint of older code with a key this code dropped
    assert ckpts.differences(ckpt, build_state(CFG, 0, CPU)) == ["retired_key (no longer a train param)"]


def test_resume_from_a_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    lines: list[str] = []
    assert ckpts.resume(build_state(CFG, 0, CPU), path, lines.append) is None and lines == []  # no file

    path.write_bytes(b"not a checkpoint")
    assert ckpts.resume(build_state(CFG, 0, CPU), path, lines.append) is None
    assert "corrupt or unreadable torch file" in lines[-1] and lines[-1].endswith("starting fresh")

    save_torch(path, ckpts.checkpoint(trained_state(CFG)) | {"mlflow_run_id": "abc123"})
    other = build_state(dataclasses.replace(CFG, ema=0.99), 0, CPU)
    assert ckpts.resume(other, path, lines.append) is None and other.step == 0
    assert "made with other params (ema 0.999 -> 0.99)" in lines[-1]

    same = build_state(CFG, 0, CPU)
    assert ckpts.resume(same, path, lines.append) == "abc123"
    assert same.step == 3 and lines[-1] == f"resuming from {path} at step 3"
