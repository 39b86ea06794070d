"""The fast training step (mnistgan.gan.fast): same contract and arithmetic as step.train_step.

On the CPU the fast path's defaults are the plain fp32 arithmetic, so it must give the same bytes. The GPU
options (bf16 autocast, channels_last, graph capture with its eager fallback) are forced on the CPU to test
their arithmetic and fallbacks without a GPU; tests marked gpu check the CUDA graph path itself.
"""

from __future__ import annotations

import io
import os
import warnings

import pytest
import torch

from mnistgan.config import TrainConfig
from mnistgan.gan import checkpoint as ckpts
from mnistgan.gan import fast, models
from mnistgan.gan import loop as core
from mnistgan.gan.fast import FastOptions, make_fast_step
from mnistgan.gan.losses import get_loss
from mnistgan.gan.step import GANState, build_state, train_step

# For the deterministic GPU test: cuBLAS reads this when it starts, i.e. before any test uses CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
CPU = torch.device("cpu")
GPU_LIKE = FastOptions(autocast=True, channels_last=True)  # the CUDA defaults minus graphs


def fast_config(**kw) -> TrainConfig:
    """TrainConfig without R1: R1's steps vary, so they take the plain step (config.plain_step_only); the fast
    path serves the recipes without it."""
    return TrainConfig(**{"r1_weight": 0.0, **kw})


def batches_for(cfg: TrainConfig, n: int, seed: int = 5, device: torch.device = CPU):
    """n steps' worth of batches: each a list of d_steps (images, labels) pairs."""
    gen = torch.Generator().manual_seed(seed)

    def pair():
        x = torch.rand(cfg.batch_size, 1, 28, 28, generator=gen) * 2 - 1
        return x.to(device), torch.randint(0, 10, (cfg.batch_size,), generator=gen).to(device)

    return [[pair() for _ in range(cfg.d_steps)] for _ in range(n)]


def assert_states_equal(a: GANState, b: GANState, atol: float = 0.0) -> None:
    ca, cb = ckpts.checkpoint(a), ckpts.checkpoint(b)
    for key in ("g", "d", "g_ema"):
        if ca[key] is None:
            assert cb[key] is None
            continue
        for name, t in ca[key].items():
            u = cb[key][name]
            if atol == 0.0:
                assert torch.equal(t, u), f"{key}.{name} differs"
            else:
                torch.testing.assert_close(u.float(), t.float(), atol=atol, rtol=0, msg=f"{key}.{name} differs")
    for key in ("opt_g", "opt_d"):
        assert ca[key]["param_groups"] == cb[key]["param_groups"]
        for i, st in ca[key]["state"].items():
            for name, t in st.items():
                u = cb[key]["state"][i][name]
                if atol == 0.0:
                    assert torch.equal(t, u), f"{key}[{i}].{name} differs"
    assert torch.equal(ca["noise_rng"], cb["noise_rng"]), "the fast path drew a different amount of noise"


CONFIGS = {
    "default": {},
    "wgan-gp-conditional-2dsteps": {"loss": "wgan-gp", "conditional": True, "d_steps": 2},
    "seed-batchnorm-d-hinge": {"model": "dcgan-large", "d_norm": "batch", "loss": "hinge", "ema": 0.0},
    "spectral-lsgan-conditional": {"d_norm": "spectral", "loss": "lsgan", "conditional": True},
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_cpu_fast_step_is_the_plain_step_bitwise(overrides):
    """Same noise draws in the same order, the same GP, the same EMA: identical bytes after 3 steps."""
    cfg = fast_config(batch_size=8, **overrides)
    plain, quick = build_state(cfg, 0, CPU), build_state(cfg, 0, CPU)
    loss = get_loss(cfg.loss)
    step = make_fast_step(quick, loss)
    assert step.options == FastOptions()  # the CPU default: plain arithmetic, no graphs
    for batches in batches_for(cfg, 3):
        torch.testing.assert_close(step(batches), train_step(plain, loss, batches), rtol=0, atol=0)
    assert_states_equal(plain, quick)


def test_fast_step_gives_finite_losses_and_changes_every_parameter():
    cfg = fast_config(batch_size=16)
    state = build_state(cfg, 0, CPU)
    before = {k: v.clone() for k, v in state.g.state_dict().items()} | {
        f"d.{k}": v.clone() for k, v in state.d.state_dict().items()
    }
    step = make_fast_step(state, get_loss(cfg.loss))
    out = step(batches_for(cfg, 1)[0])
    assert out.shape == (5,) and torch.isfinite(out).all()
    after = state.g.state_dict() | {f"d.{k}": v for k, v in state.d.state_dict().items()}
    unchanged = [k for k, v in after.items() if v.is_floating_point() and torch.equal(v, before[k])]
    assert not unchanged, f"not updated: {unchanged}"


def test_train_with_fast_on_equals_plain_on_cpu():
    """loop.train with train.fast on (the integration path) gives the same run as fast off."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(256, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (256,), generator=g)
    runs = {}
    for mode in ("off", "on"):
        cfg = fast_config(batch_size=8, steps=8, log_every=4, fast=mode)
        state = build_state(cfg, 0, CPU)
        runs[mode] = (state, core.train(state, x, y, progress=False))
    assert runs["on"][1].final == runs["off"][1].final
    assert runs["on"][0].history == runs["off"][0].history
    assert_states_equal(runs["off"][0], runs["on"][0])


def test_gpu_arithmetic_on_cpu_tracks_the_plain_step():
    """bf16 autocast + channels_last (what runs on CUDA, minus the graph) stays close to fp32."""
    cfg = fast_config(batch_size=8, loss="wgan-gp", conditional=True)
    plain, quick = build_state(cfg, 0, CPU), build_state(cfg, 0, CPU)
    loss = get_loss(cfg.loss)
    step = make_fast_step(quick, loss, GPU_LIKE)
    conv = quick.g.conv[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for batches in batches_for(cfg, 3):
        a, b = train_step(plain, loss, batches), step(batches)
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=0.03, atol=0.05)
    assert_states_equal(plain, quick, atol=0.01)


def test_capture_failure_warns_once_and_continues_on_the_plain_step():
    """Asking for graphs without CUDA exercises the real capture path: it fails, warns once, and every step
    (warm-up, the failed capture's step, the rest) is exactly the plain step."""
    cfg = fast_config(batch_size=8)
    plain, quick = build_state(cfg, 0, CPU), build_state(cfg, 0, CPU)
    loss = get_loss(cfg.loss)
    step = make_fast_step(quick, loss, FastOptions(graphs=True, warmup=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batches in batches_for(cfg, 5):
            torch.testing.assert_close(step(batches), train_step(plain, loss, batches), rtol=0, atol=0)
    messages = [str(w.message) for w in caught if "mnistgan.gan.fast" in str(w.message)]
    assert len(messages) == 1 and "CUDA graph capture failed" in messages[0], messages
    assert "continues on the plain step" in messages[0]
    assert step.graphs_failed and step.fell_back
    assert all(p.requires_grad for p in quick.d.parameters())  # restored after the failed capture
    assert_states_equal(plain, quick)


def test_after_a_failed_capture_the_modules_are_back_in_the_plain_layout():
    """With channels_last on (the CUDA default), the fallback puts the weights and the optimizer state back
    in the contiguous layout, so the plain step that continues runs as it would from the start."""
    cfg = fast_config(batch_size=8)
    state = build_state(cfg, 0, CPU)
    step = make_fast_step(state, get_loss(cfg.loss), FastOptions(graphs=True, channels_last=True, warmup=1))
    conv = state.g.conv[0].weight
    assert not conv.is_contiguous()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for batches in batches_for(cfg, 3):
            assert torch.isfinite(step(batches)).all()
    assert step.fell_back and conv.is_contiguous()
    for opt in (state.opt_g, state.opt_d):
        for p in opt.param_groups[0]["params"]:
            assert all(t.stride() == p.stride() for t in opt.state[p].values() if t.shape == p.shape)


def test_compile_failure_warns_once_and_continues_on_the_plain_step(monkeypatch):
    """A torch.compile that fails at its first call (forced: the compiled forward raises) costs one
    warning; the step that hit it and every later one are the plain steps."""

    def broken_compile(module):
        def forward(*args):
            raise RuntimeError("backend exploded\nsecond line")

        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    cfg = fast_config(batch_size=8, conditional=True)
    plain, quick = build_state(cfg, 0, CPU), build_state(cfg, 0, CPU)
    loss = get_loss(cfg.loss)
    step = make_fast_step(quick, loss, FastOptions(compile=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batches in batches_for(cfg, 3):
            torch.testing.assert_close(step(batches), train_step(plain, loss, batches), rtol=0, atol=0)
    messages = [str(w.message) for w in caught if "mnistgan.gan.fast" in str(w.message)]
    assert messages == [
        "mnistgan.gan.fast: torch.compile failed (RuntimeError: backend exploded); training continues on the plain step"
    ], messages
    assert step.compile_failed and step.fell_back
    assert_states_equal(plain, quick)


def test_a_fast_path_that_cannot_be_built_trains_on_the_plain_step(monkeypatch):
    """train.fast: on, and building the fast step raises: one warning, then the same run as fast: off."""

    def broken(*_args, **_kwargs):
        raise RuntimeError("no graphs here")

    monkeypatch.setattr(fast, "make_fast_step", broken)
    x, y = batches_for(fast_config(batch_size=64), 1)[0][0]
    runs = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in ("off", "on"):
            cfg = fast_config(batch_size=8, steps=4, log_every=2, fast=mode)
            state = build_state(cfg, 0, CPU)
            runs[mode] = core.train(state, x, y, progress=False), state
    messages = [str(w.message) for w in caught if "mnistgan.gan.fast" in str(w.message)]
    assert len(messages) == 1 and "no graphs here" in messages[0] and "plain step" in messages[0], messages
    assert runs["on"][0].final == runs["off"][0].final
    assert_states_equal(runs["off"][1], runs["on"][1])


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_checkpoint_of_a_channels_last_fast_run_resumes_exactly():
    cfg = fast_config(batch_size=8)
    loss = get_loss(cfg.loss)
    data = batches_for(cfg, 5)
    opts = FastOptions(channels_last=True)
    state = build_state(cfg, 0, CPU)
    step = make_fast_step(state, loss, opts)
    for batches in data[:3]:
        step(batches)
    ckpt = ckpts.checkpoint(state)
    assert all(not g["capturable"] for g in ckpt["opt_g"]["param_groups"] + ckpt["opt_d"]["param_groups"])
    resumed = build_state(cfg, 1, CPU)  # another seed: everything must come from the checkpoint
    ckpts.restore(resumed, _roundtrip(ckpt))  # one copy per restore: loaded optimizer state aliases it
    step_resumed = make_fast_step(resumed, loss, opts)  # re-lays out the loaded (NCHW) optimizer state
    on_plain = build_state(cfg, 1, CPU)
    ckpts.restore(on_plain, _roundtrip(ckpt))
    for batches in data[3:]:
        a, b = step(batches), step_resumed(batches)
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(train_step(on_plain, loss, batches), a, rtol=0.01, atol=1e-3)
    assert_states_equal(state, resumed)
    assert_states_equal(state, on_plain, atol=2e-3)  # NCHW kernels round differently; Adam amplifies ~0 grads


def test_restore_after_the_fast_step_was_made():
    """checkpoint.restore after make_fast_step (the optimizer hooks re-lay out the reloaded state and drop the
    slots) continues exactly like a fast step made after the restore."""
    cfg = fast_config(batch_size=8, loss="lsgan")
    loss = get_loss(cfg.loss)
    data = batches_for(cfg, 4)
    source = build_state(cfg, 0, CPU)
    for batches in data[:2]:
        train_step(source, loss, batches)
    ckpt = ckpts.checkpoint(source)
    opts = FastOptions(channels_last=True)
    first = build_state(cfg, 1, CPU)
    ckpts.restore(first, _roundtrip(ckpt))
    step_first = make_fast_step(first, loss, opts)
    second = build_state(cfg, 1, CPU)
    step_second = make_fast_step(second, loss, opts)
    step_second(data[0])  # creates optimizer state and a slot, both replaced by the restore below
    ckpts.restore(second, _roundtrip(ckpt))
    assert all(s.eager_steps == 0 and s.graph is None for s in step_second._slots.values())
    weight = second.g.conv[0].weight
    assert second.opt_g.state[weight]["exp_avg"].stride() == weight.stride()
    for batches in data[2:]:
        torch.testing.assert_close(step_second(batches), step_first(batches), rtol=0, atol=0)
    assert_states_equal(first, second)


def _templates() -> torch.Tensor:
    """Four 28x28 'digits': a bright 10x10 square in one of four places on a dark background."""
    t = -torch.ones(4, 1, 28, 28)
    for k, (r, c) in enumerate([(3, 3), (3, 15), (15, 3), (15, 15)]):
        t[k, :, r : r + 10, c : c + 10] = 1
    return t


def _template_distance(state: GANState, templates: torch.Tensor) -> float:
    """Mean L1 distance of 512 samples to their nearest template (about 0.9 for an untrained G)."""
    g = state.sampler
    g.eval()
    with torch.no_grad():
        s = g(torch.randn(512, state.cfg.z_dim, generator=torch.Generator().manual_seed(9)))
    g.train()
    return float((s[:, None] - templates[None]).abs().mean(dim=(2, 3, 4)).min(dim=1).values.mean())


def test_gpu_arithmetic_trains_as_well_as_plain_on_a_tiny_problem(monkeypatch):
    """The quality check at CPU scale: loop.train with the fast path in its GPU arithmetic
    (bf16 autocast + channels_last, forced on the CPU) and the plain path, equal steps, same seed, on
    four-template images; both must learn, and reach about the same quality."""
    monkeypatch.setitem(
        models.MODELS,
        "tiny",
        (
            lambda z, c, w, up: models.SmallGenerator(z, c, width=8, upsample=up),
            lambda n, c, w: models.small_discriminator(n, c, width=8),
        ),
    )
    templates = _templates()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 4, (1024,), generator=g)
    x = (templates[idx] + 0.1 * torch.randn(1024, 1, 28, 28, generator=g)).clamp(-1, 1)
    quality = {}
    for mode in ("off", "on"):
        cfg = fast_config(
            model="tiny", batch_size=32, steps=200, lr=2e-3, ema=0.0, fast=mode, log_every=50, conditional=False
        )
        if mode == "on":
            monkeypatch.setattr(fast.FastOptions, "for_device", staticmethod(lambda device, det=False: GPU_LIKE))
        state = build_state(cfg, 0, CPU)
        start = _template_distance(state, templates)
        core.train(state, x, idx, progress=False)
        quality[mode] = (start, _template_distance(state, templates))
    print(f"distance to the nearest template (start, end): {quality}")
    (start_off, off), (start_on, on) = quality["off"], quality["on"]
    assert start_on == start_off > 0.8
    assert off < 0.4 * start_off and on < 0.4 * start_on, quality  # both learned (measured: 0.90 -> 0.19)
    assert abs(on - off) < 0.1, quality  # and equally well (measured: 0.190 and 0.189)


# ---- on a GPU ---------------------------------------------------------------------------------------

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def cuda_flags():
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    yield torch.device("cuda")
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


@gpu
@needs_cuda
@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_gpu_graph_replay_equals_eager_fp32(cuda_flags, overrides):
    """The captured step is the eager fast step: fp32, channels_last, graphs on vs off (deterministic
    kernels, so that both run the same algorithms)."""
    dev = cuda_flags
    cfg = fast_config(batch_size=64, deterministic=True, **overrides)
    loss = get_loss(cfg.loss)
    a, b = build_state(cfg, 0, dev), build_state(cfg, 0, dev)
    eager = make_fast_step(a, loss, FastOptions(channels_last=True))
    graphed = make_fast_step(b, loss, FastOptions(channels_last=True, graphs=True, warmup=2))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="mnistgan.gan.fast")  # a capture failure must not pass silently
        for batches in batches_for(cfg, 8, device=dev):
            torch.testing.assert_close(graphed(batches), eager(batches), rtol=1e-4, atol=1e-4)
    assert not graphed.graphs_failed and all(s.graph is not None for s in graphed._slots.values())
    assert_states_equal(a, b, atol=1e-4)


@gpu
@needs_cuda
def test_gpu_fast_default_trains_without_host_sync(cuda_flags):
    dev = cuda_flags
    cfg = fast_config(batch_size=256)
    plain, quick = build_state(cfg, 0, dev), build_state(cfg, 0, dev)
    loss = get_loss(cfg.loss)
    step = make_fast_step(quick, loss)
    assert step.options.graphs and step.options.autocast and step.options.channels_last
    data = batches_for(cfg, 12, device=dev)
    outs, refs = [], []
    for i, batches in enumerate(data):
        if i == 8:  # warm-up and capture are behind us: replays must never wait for the host
            torch.cuda.set_sync_debug_mode("error")
        try:
            outs.append(step(batches))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        refs.append(train_step(plain, loss, batches))
    assert not step.graphs_failed
    out, ref = torch.stack(outs), torch.stack(refs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :2], ref[:, :2], rtol=0.05, atol=0.05)  # bf16 vs fp32 losses
    assert torch.equal(quick.noise.get_state(), plain.noise.get_state())  # the same draws
    ckpt = ckpts.checkpoint(quick)
    assert all(not g["capturable"] for g in ckpt["opt_g"]["param_groups"])
    assert all(g["capturable"] for g in quick.opt_g.param_groups)


@gpu
@needs_cuda
def test_gpu_restore_after_capture_recaptures(cuda_flags):
    dev = cuda_flags
    cfg = fast_config(batch_size=64, deterministic=True)
    loss = get_loss(cfg.loss)
    data = batches_for(cfg, 10, device=dev)
    source = build_state(cfg, 0, dev)
    for batches in data[:2]:
        train_step(source, loss, batches)
    ckpt = ckpts.checkpoint(source)
    opts = FastOptions(channels_last=True, graphs=True, warmup=1)
    fresh = build_state(cfg, 1, dev)
    ckpts.restore(fresh, _roundtrip(ckpt))
    step_fresh = make_fast_step(fresh, loss, opts)
    reused = build_state(cfg, 1, dev)
    step_reused = make_fast_step(reused, loss, opts)
    for batches in data[:4]:  # warm-up and capture on other weights
        step_reused(batches)
    ckpts.restore(reused, _roundtrip(ckpt))
    for batches in data[2:]:
        torch.testing.assert_close(step_reused(batches), step_fresh(batches), rtol=1e-4, atol=1e-4)
    assert_states_equal(fresh, reused, atol=1e-4)


@gpu
@needs_cuda
def test_gpu_deterministic_runs_repeat_bitwise(cuda_flags):
    dev = cuda_flags
    cfg = fast_config(batch_size=128, deterministic=True, loss="wgan-gp")
    loss = get_loss(cfg.loss)
    data = batches_for(cfg, 6, device=dev)
    states = []
    for _ in range(2):
        state = build_state(cfg, 0, dev)
        step = make_fast_step(state, loss)
        assert not step.options.compile and not torch.backends.cudnn.benchmark
        for batches in data:
            step(batches)
        states.append(state)
    assert torch.are_deterministic_algorithms_enabled()
    assert_states_equal(*states)
