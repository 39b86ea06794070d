import pytest
import torch

from mnistgan.gan.losses import LOSSES, get_loss, gradient_penalty, r1_penalty


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_finite_and_reward_the_right_player(name):
    loss = get_loss(name)
    good_real, bad_fake = torch.full((8,), 3.0), torch.full((8,), -3.0)  # D separates well
    fooled_real, fooled_fake = torch.full((8,), -3.0), torch.full((8,), 3.0)  # D is fooled
    d_good, d_bad = loss.d(good_real, bad_fake), loss.d(fooled_real, fooled_fake)
    assert torch.isfinite(d_good) and torch.isfinite(d_bad)
    assert d_good < d_bad  # D's loss is lower when it separates real from fake
    assert loss.g(fooled_fake) < loss.g(bad_fake)  # G's loss is lower when its fakes fool D


@pytest.mark.parametrize("name", list(LOSSES))
def test_generator_gradient_pushes_fake_logits_up(name):
    fake = torch.zeros(4, requires_grad=True)
    get_loss(name).g(fake).backward()
    assert (fake.grad < 0).all()  # gradient descent raises D's score of the fakes


@pytest.mark.parametrize("name", list(LOSSES))
def test_discriminator_gradient_separates(name):
    # Both at 0.5: undecided for every loss (LSGAN's fake target 0 would give no gradient at exactly 0).
    real, fake = torch.full((4,), 0.5, requires_grad=True), torch.full((4,), 0.5, requires_grad=True)
    get_loss(name).d(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()


def test_minimax_saturates_where_ns_does_not():
    confident_reject = torch.full((4,), -10.0, requires_grad=True)
    get_loss("minimax").g(confident_reject).backward()
    g_minimax = confident_reject.grad.abs().max().item()
    confident_reject.grad = None
    get_loss("ns").g(confident_reject).backward()
    assert g_minimax < 1e-3 < confident_reject.grad.abs().max().item()


def test_gradient_penalty_zero_for_unit_slope_critic():
    w = torch.randn(784)
    w = w / w.norm()  # critic x -> <w, x> has gradient norm exactly 1 everywhere
    critic = lambda x: x.flatten(1) @ w  # noqa: E731
    real, fake = torch.randn(16, 1, 28, 28), torch.randn(16, 1, 28, 28)
    eps = torch.rand(16, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    gp = gradient_penalty(critic, real, fake, eps)
    assert gp.item() == pytest.approx(0.0, abs=1e-10)
    steep = lambda x: 3 * (x.flatten(1) @ w)  # noqa: E731 - gradient norm 3 -> penalty (3-1)^2 = 4
    assert gradient_penalty(steep, real, fake, eps).item() == pytest.approx(4.0)


def test_r1_penalty_is_the_squared_gradient_norm_on_real_images():
    w = torch.randn(784)
    critic = lambda x: x.flatten(1) @ w + 0.5  # noqa: E731 - gradient w at every image
    real = torch.randn(8, 1, 28, 28)
    assert r1_penalty(critic, real).item() == pytest.approx(float(w @ w), rel=1e-6)
    square = lambda x: (x.flatten(1) ** 2).sum(1)  # noqa: E731 - gradient 2x: penalty E[4 |x|^2]
    assert r1_penalty(square, real).item() == pytest.approx(float(4 * (real.flatten(1) ** 2).sum(1).mean()), rel=1e-5)
    assert not real.requires_grad  # the caller's batch is left as it was


def test_unknown_loss_lists_known():
    with pytest.raises(KeyError, match="known losses: minimax, ns, lsgan, hinge, wgan-gp"):
        get_loss("wgan")


def test_shape_check():
    with pytest.raises(ValueError, match=r"logits must be \(B,\)"):
        get_loss("ns").g(torch.zeros(4, 1))
