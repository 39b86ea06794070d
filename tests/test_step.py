"""mnistgan.gan.step: one training step (every loss and model), the EMA and its warm-up."""

import pytest
import torch
from test_loop import DEV, params_vector, tiny_cfg, tiny_data

from mnistgan.gan.losses import LOSSES, get_loss
from mnistgan.gan.step import build_state, ema_decay, train_step, update_ema


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
