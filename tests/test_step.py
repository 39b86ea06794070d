"""mnistgan.gan.step: one training step (every loss and model), the EMA and its warm-up, R1, the lr decay and
top-k generator updates."""

import pytest
import torch
from test_loop import DEV, params_vector, tiny_cfg, tiny_data

from mnistgan.config import TrainConfig
from mnistgan.gan.losses import LOSSES, Loss, get_loss
from mnistgan.gan.step import build_state, ema_decay, lr_factor, r1_due, topk_count, train_step, update_ema


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("model", ["dcgan-small", "dcgan-large"])
def test_one_step_changes_both_players(loss, model):
    cfg = tiny_cfg(
        loss=loss, model=model, conditional=(loss == "hinge"), d_norm="batch" if model == "dcgan-large" else "none"
    )
    state = build_state(cfg, 0, DEV)
    g0, d0 = params_vector(state.g), params_vector(state.d)
    x, y = tiny_data(16)
    out = train_step(state, get_loss(loss), [(x, y)])
    assert out.shape == (5,) and torch.isfinite(out).all()
    assert not torch.equal(g0, params_vector(state.g)) and not torch.equal(d0, params_vector(state.d))
    if loss == "wgan-gp":
        assert out[4] > 0  # the penalty was computed
    assert not torch.equal(params_vector(state.g_ema), g0)  # EMA moved toward G


def test_ema_is_weighted_average():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    update_ema(a, b, 0.9)
    torch.testing.assert_close(a.weight.detach(), expected)


def test_ema_warmup_decay_ramp_exact_values():
    # min(decay, (1+t)/(10+t)) for t = 0, 1, 2, ...: 1/10, 2/11, 3/12, ...; capped at the decay
    assert [ema_decay(0.999, True, t) for t in range(4)] == [0.1, 2 / 11, 3 / 12, 4 / 13]
    assert ema_decay(0.5, True, 100) == 0.5  # (101/110) > 0.5: the cap holds
    assert ema_decay(0.999, True, 8990) == 8991 / 9000  # still ramping just below 0.999
    assert ema_decay(0.999, True, 8991) == 0.999  # 8992/9001 > 0.999
    assert ema_decay(0.999, False, 0) == 0.999


def test_lr_factor_exact_values():
    cfg = TrainConfig(steps=100, lr_decay_from=0.6)
    assert [lr_factor(cfg, s) for s in (0, 59, 60, 70, 90, 99, 100)] == [1.0, 1.0, 1.0, 0.75, 0.25, 0.025, 0.0]
    assert lr_factor(TrainConfig(steps=100), 99) == 1.0  # off by default


def test_lr_decay_sets_both_optimizers_before_each_step():
    cfg = tiny_cfg(steps=10, lr_decay_from=0.5, lr=1e-3, lr_d=4e-3)
    state = build_state(cfg, 0, DEV)
    x, y = tiny_data(16)
    state.step = 7
    train_step(state, get_loss(cfg.loss), [(x, y)])
    assert state.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.6)  # (10 - 7) / (10 - 5)
    assert state.opt_d.param_groups[0]["lr"] == pytest.approx(4e-3 * 0.6)


def test_topk_count_exact_values():
    cfg = TrainConfig(batch_size=64, topk_min=0.5, topk_decay=0.5)
    # epoch = step x 64 / 60,000: 0 at step 0, 1 at 937.5, 2 at 1875
    assert [topk_count(cfg, s, 64) for s in (0, 1875, 9375)] == [64, 32, 32]
    assert topk_count(TrainConfig(batch_size=64, topk_min=0.75, topk_decay=0.99), 9375, 64) == 58  # 0.99^10 = 0.904
    assert topk_count(TrainConfig(), 10**6, 64) == 64  # off by default
    assert topk_count(TrainConfig(topk_min=0.01, topk_decay=0.01), 10**6, 64) == 1  # never empty


def test_topk_generator_loss_uses_the_fakes_d_rates_most_real():
    cfg = tiny_cfg(topk_min=0.25, topk_decay=1e-6)  # past the first steps: a quarter of the batch
    state = build_state(cfg, 0, DEV)
    state.step = 1000
    seen: dict[str, torch.Tensor] = {}
    d_forward = state.d.forward
    state.d.forward = lambda x, labels=None: seen.setdefault("d", []).append(d_forward(x, labels)) or seen["d"][-1]
    base = get_loss("ns")
    loss = Loss(base.d, lambda logits: seen.setdefault("g_in", logits) is None or base.g(logits))
    x, y = tiny_data(16)
    train_step(state, loss, [(x, y)])
    all_fakes = seen["d"][-1].detach()  # (16,): D's logits of the fakes in the generator update
    assert seen["g_in"].shape == (4,)
    torch.testing.assert_close(seen["g_in"].detach(), all_fakes.topk(4).values, rtol=0, atol=0)


def test_r1_runs_on_every_r1_every_th_step_only():
    cfg = tiny_cfg(r1_weight=5.0, r1_every=3)
    assert [r1_due(cfg, s) for s in range(7)] == [True, False, False, True, False, False, True]
    state = build_state(cfg, 0, DEV)
    x, y = tiny_data(16)
    penalties = []
    for _ in range(4):
        penalties.append(float(train_step(state, get_loss(cfg.loss), [(x, y)])[4]))
        state.step += 1
    assert penalties[0] > 0 and penalties[3] > 0 and penalties[1] == penalties[2] == 0.0
