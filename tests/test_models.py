import pytest
import torch

from mnistgan.config import D_NORMS, MODELS
from mnistgan.evaluation.classifier import Classifier
from mnistgan.gan.models import LargeGenerator, build_gan


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("norm", D_NORMS)
@pytest.mark.parametrize("conditional", [False, True])
def test_shapes(model, norm, conditional):
    g, d = build_gan(model, 100, norm, conditional)
    z, y = torch.randn(4, 100), torch.arange(4)
    x = g(z, y if conditional else None)
    assert x.shape == (4, 1, 28, 28)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x, y if conditional else None).shape == (4,)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_resize_conv_generator_has_no_transposed_convolution(upsample):
    g, _ = build_gan("dcgan-small", 100, "none", True, g_width=16, g_upsample=upsample)
    x = g(torch.randn(4, 100), torch.arange(4))
    assert x.shape == (4, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    ups = [m for m in g.modules() if isinstance(m, torch.nn.Upsample)]
    assert [(m.scale_factor, m.mode) for m in ups] == [(2.0, upsample)] * 2
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [(32, 16, (3, 3)), (16, 1, (3, 3))]
    with pytest.raises(KeyError, match="dcgan-large has transposed convolutions only"):
        build_gan("dcgan-large", 100, "batch", False, g_upsample=upsample)


def test_large_generator_is_the_seed_architecture_layer_for_layer():
    g = LargeGenerator(100)
    linears = [m for m in g.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(100, 1024), (1024, 1024), (1024, 7 * 7 * 256)]
    convs = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (256, 128, (5, 5), (2, 2)),
        (128, 64, (5, 5), (2, 2)),
        (64, 1, (7, 7), (1, 1)),
    ]
    assert sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules()) == 5
    assert isinstance(list(g.modules())[-1], torch.nn.Tanh)


def test_large_discriminator_layers():
    _, d = build_gan("dcgan-large", 100, "batch", False)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (32, (5, 5), (2, 2)),
        (64, (5, 5), (2, 2)),
        (128, (5, 5), (2, 2)),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 3
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in d.modules()) == 3


def test_spectral_norm_is_applied():
    _, d = build_gan("dcgan-small", 100, "spectral", False)
    assert any("parametrizations" in name for name, _ in d.named_parameters())


def test_unknown_model_lists_known():
    with pytest.raises(KeyError, match="known models: dcgan-large, dcgan-small"):
        build_gan("big", 100, "none", False)


def test_classifier_shapes():
    c = Classifier().eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert c(x).shape == (3, 10) and c.features(x).shape == (3, Classifier.FEATURES)
