"""mnistgan.gan.loop: the training loop around the step: resume, callbacks, divergence, time budget, the
saved generator."""

import contextlib
import copy
import io

import pytest
import torch

from mnistgan import runtime
from mnistgan.config import TrainConfig
from mnistgan.gan import checkpoint as ckpts
from mnistgan.gan import loop as core
from mnistgan.gan.losses import get_loss
from mnistgan.gan.models import build_gan
from mnistgan.gan.sample import check_generator_file, fixed_noise, generate, generator_from_file, recalibrate_batchnorm
from mnistgan.gan.step import build_state, train_step

DEV = torch.device("cpu")


def tiny_cfg(**kw):
    base = dict(batch_size=16, steps=12, log_every=4, image_every=6, checkpoint_every=4, train_images=128)
    return TrainConfig(**{**base, **kw})


def tiny_data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def params_vector(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_ema_warmup_in_training_steps():
    # After the first step the EMA copy is 0.9 x initial weights + 0.1 x the updated generator.
    cfg = tiny_cfg(ema=0.999, ema_warmup=True)
    state = build_state(cfg, 0, DEV)
    g0 = params_vector(state.g)
    x, y = tiny_data(16)
    train_step(state, get_loss(cfg.loss), [(x, y)])
    torch.testing.assert_close(params_vector(state.g_ema), g0.lerp(params_vector(state.g), 0.9), rtol=0, atol=1e-6)
    state.step = 1
    ema1, g1 = params_vector(state.g_ema), None
    train_step(state, get_loss(cfg.loss), [(x, y)])
    g1 = params_vector(state.g)
    torch.testing.assert_close(params_vector(state.g_ema), ema1.lerp(g1, 1 - 2 / 11), rtol=0, atol=1e-6)


def run_training(cfg, seed=0, stop_at=None, resume_from=None):
    x, y = tiny_data()
    state = build_state(cfg, seed, DEV)
    if resume_from is not None:
        ckpts.restore(state, torch.load(io.BytesIO(resume_from), weights_only=True))
    saved = {}

    def on_checkpoint(step, ckpt):
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        saved[step] = buf.getvalue()

    with contextlib.suppress(core.StopRequested):
        core.train(
            state,
            x,
            y,
            on_checkpoint=on_checkpoint,
            progress=False,
            stop_requested=lambda: stop_at is not None and state.step >= stop_at,
        )
    return state, saved


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "ns"},
        {"loss": "wgan-gp"},
        {"ema_warmup": True, "g_width": 16, "d_width": 8, "lr_d": 4e-4},
        {"ema_warmup": False, "conditional": True, "loss": "hinge", "d_norm": "spectral"},
        {
            "g_upsample": "nearest",
            "r1_weight": 1.0,
            "r1_every": 3,
            "lr_decay_from": 0.5,
            "topk_min": 0.5,
            "topk_decay": 1e-3,
            "g_width": 16,
            "d_width": 8,
        },
    ],
)
def test_resume_is_exact(options):
    cfg = tiny_cfg(**options)
    straight, _ = run_training(cfg)
    stopped, saved = run_training(cfg, stop_at=7)  # between checkpoints: stop saves its own
    assert stopped.step == 7 and max(saved) == 7
    torch.manual_seed(12345)  # global RNG disturbed in between, as in a new process
    resumed, _ = run_training(cfg, resume_from=saved[7])
    assert resumed.step == cfg.steps
    for a, b in [(straight.g, resumed.g), (straight.d, resumed.d), (straight.g_ema, resumed.g_ema)]:
        assert torch.equal(params_vector(a), params_vector(b))
    assert straight.history == resumed.history


def test_resumed_run_reports_the_whole_runs_time_and_last_losses():
    cfg = tiny_cfg()
    x, y = tiny_data()
    first, saved = build_state(cfg, 0, DEV), {}
    with contextlib.suppress(core.StopRequested):
        core.train(
            first,
            x,
            y,
            on_checkpoint=lambda s, c: saved.update({s: copy.deepcopy(c)}),
            progress=False,
            stop_requested=lambda: first.step >= 7,
        )
    assert saved[7]["train_seconds"] > 0

    resumed = build_state(cfg, 0, DEV)
    ckpts.restore(resumed, saved[7])
    result = core.train(resumed, x, y, on_checkpoint=lambda s, c: saved.update({s: copy.deepcopy(c)}), progress=False)
    assert result.resumed_from == 7 and result.steps == cfg.steps
    assert result.seconds == pytest.approx(saved[7]["train_seconds"] + result.seconds_this_process)
    assert result.images_per_second == pytest.approx(cfg.steps * cfg.batch_size / result.seconds)

    # Resumed from the final checkpoint (a rerun after a crash past the last step): nothing to train, but
    # the losses and timing are the run's, not zeros.
    done = build_state(cfg, 0, DEV)
    ckpts.restore(done, saved[cfg.steps])
    again = core.train(done, x, y, progress=False)
    assert again.resumed_from == cfg.steps and again.seconds_this_process < 1.0
    assert again.final == result.final and set(again.final) == set(core.LOSS_COLUMNS)
    assert again.seconds == pytest.approx(result.seconds, abs=1.0) and again.images_per_second > 0


def test_same_seed_same_weights_other_seed_differs():
    cfg = tiny_cfg(steps=4)
    a, _ = run_training(cfg, seed=0)
    b, _ = run_training(cfg, seed=0)
    c, _ = run_training(cfg, seed=1)
    assert torch.equal(params_vector(a.g), params_vector(b.g))
    assert not torch.equal(params_vector(a.g), params_vector(c.g))


def test_divergence_names_step_and_loss(monkeypatch):
    cfg = tiny_cfg(log_every=2)
    real_step = train_step

    def nan_after_three(state, loss, batches):
        out = real_step(state, loss, batches)
        return out * float("nan") if state.step >= 3 else out

    monkeypatch.setattr(core, "train_step", nan_after_three)
    saved = []
    x, y = tiny_data()
    state = build_state(cfg, 0, DEV)
    with pytest.raises(core.DivergenceError, match=r"loss_d is nan at step 4"):
        core.train(state, x, y, on_checkpoint=lambda s, c: saved.append(s), progress=False)
    assert saved == []  # the non-finite interval was never checkpointed


def test_loss_rows_and_image_callbacks():
    cfg = tiny_cfg()
    x, y = tiny_data()
    state = build_state(cfg, 0, DEV)
    rows, images = [], []
    result = core.train(
        state, x, y, on_log=lambda s, r: rows.append(s), on_images=lambda s, im: images.append((s, im)), progress=False
    )
    assert rows == [4, 8, 12]
    assert [s for s, _ in images] == [6, 12]
    assert images[0][1].shape == (100, 28, 28) and images[0][1].dtype == torch.uint8
    assert result.steps == 12 and result.images_per_second > 0
    assert set(result.final) == set(core.LOSS_COLUMNS)


def test_generator_file_round_trip_and_check():
    cfg = tiny_cfg(model="dcgan-small", conditional=True)
    state = build_state(cfg, 0, DEV)
    sampler = core.finalize_sampler(state, DEV)
    obj = core.generator_file(state, sampler)
    g, cfg2 = generator_from_file(obj)
    assert cfg2 == cfg and check_generator_file(obj) is None
    z, y = fixed_noise(cfg.z_dim, True, 0, n=20)
    torch.testing.assert_close(generate(g, z, y), generate(sampler, z, y), rtol=0, atol=0)
    obj["state_dict"] = {k: v[..., :1] if v.dim() else v for k, v in obj["state_dict"].items()}
    assert "does not match the code" in check_generator_file(obj)
    assert "format" in check_generator_file({"format": "x"})


def test_recalibrated_batchnorm_matches_batch_statistics():
    cfg = tiny_cfg(model="dcgan-small", conditional=False)
    state = build_state(cfg, 0, DEV)
    g = state.g
    recalibrate_batchnorm(g, cfg.z_dim, False, seed=0, device=DEV, n_batches=8, batch_size=512)
    bn = next(m for m in g.modules() if isinstance(m, torch.nn.BatchNorm1d))
    with torch.no_grad():
        h = g.dense[0](torch.randn(4096, cfg.z_dim))  # the first BN's input
    torch.testing.assert_close(bn.running_mean, h.mean(0), atol=0.05, rtol=0.05)


def test_epoch_order_is_a_pure_function():
    from mnistgan.tensors import epoch_permutation

    assert torch.equal(epoch_permutation(3, 2, 50), epoch_permutation(3, 2, 50))
    assert not torch.equal(epoch_permutation(3, 2, 50), epoch_permutation(3, 3, 50))
    assert sorted(epoch_permutation(0, 0, 50).tolist()) == list(range(50))


def test_cuda_requested_without_cuda_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        runtime.resolve_device("cuda")


def test_max_seconds_stops_at_a_loss_row_and_saves_a_checkpoint(monkeypatch):
    clock = iter(range(0, 10**6, 1))  # perf_counter advances 1 s per call
    monkeypatch.setattr(core.time, "perf_counter", lambda: float(next(clock)))
    cfg = tiny_cfg(steps=1000, max_seconds=5.0, log_every=2, checkpoint_every=1000)
    state, saved = run_training(cfg)
    assert state.step < 1000 and state.step % cfg.log_every == 0  # stopped by the clock, at a loss row
    assert max(saved) == state.step  # the stop saved the state it ended in
    assert state.history[-1]["step"] == state.step
    resumed, again = run_training(cfg, resume_from=saved[state.step])  # its budget is spent: no more steps
    assert resumed.step == state.step and not again


def test_widths_change_the_small_models():
    g, d = build_gan("dcgan-small", 8, "none", False, g_width=16, d_width=8)
    assert g.conv[0].out_channels == 16 and d.features[0].out_channels == 8
