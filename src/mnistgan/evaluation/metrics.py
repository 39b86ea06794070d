"""Sample-quality metrics as pure functions of arrays: features -> statistics -> score.

Everything here takes numpy arrays made by the yardstick classifier (`classifier.features_and_probs`:
penultimate ReLU features (N, 128) and softmax probabilities (N, 10)) and returns plain floats. No I/O,
no torch. The chains are named x_to_y after torch-fidelity (toshas/torch-fidelity 0.4.0), whose
conventions they follow and against which tests/test_metrics.py holds them (relative error < 1e-5):
FID sigma with ddof=1, IS and KID spreads with ddof=0, KID's unbiased MMD^2 with a cubic polynomial kernel.

Every function checks its inputs and raises ValueError with one line naming the problem (NaN/Inf, wrong
ndim, mismatched feature sizes, too few samples for the metric).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from scipy.special import rel_entr

# Elements of one block of a distance matrix: 2**23 (32 MiB in float32). Large enough for BLAS to run at
# full speed (2**21 was ~20% slower on 2 cores), small enough that 10k x 60k (2.4 GB) never exists at once.
_BLOCK = 1 << 23

# Nearest-neighbour searches run in float32 on centred points: on the 2-core CPU a 10k x 60k x 128
# product took 8.4 s in float64 and 4.3 s in float32 (numpy 2.4, 2026-11-27). Centring keeps |x|^2 small,
# so the rounding error of |x|^2 + |y|^2 - 2 x.y (~1e-6 relative) is far below nearest-neighbour spacings.
# FID, KID and IS stay in float64 (they are differences of large sums and are held to torch-fidelity).
_DIST_DTYPE = np.float32

# --- input checks -------------------------------------------------------------------------------------


def as_2d(name: str, x: np.ndarray, min_rows: int, why: str = "") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (samples, features), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: has no feature columns (shape {x.shape})")
    if len(x) < min_rows:
        raise ValueError(f"{name}: {len(x)} samples, at least {min_rows} needed{why}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{name}: {bad} of {len(x)} rows contain NaN or Inf")
    return x.astype(np.float64, copy=False)


def same_width(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} has {a.shape[1]} features per sample but {name_b} has {b.shape[1]}")


def check_probs(name: str, probs: np.ndarray, min_rows: int = 1, why: str = "") -> np.ndarray:
    p = as_2d(name, probs, min_rows, why)
    if p.shape[1] < 2:
        raise ValueError(f"{name}: expected class probabilities (N, classes >= 2), got shape {p.shape}")
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"{name}: probabilities outside [0, 1] (min {p.min():.3g}, max {p.max():.3g})")
    row_err = np.abs(p.sum(axis=1) - 1).max()
    if row_err > 1e-3:
        raise ValueError(f"{name}: rows do not sum to 1 (worst is off by {row_err:.3g}); pass softmax output")
    return p


def _check_k(k: int) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k: expected a positive integer number of neighbours, got {k!r}")


# --- Inception Score ----------------------------------------------------------------------------------


def probs_to_inception_score(
    probs: np.ndarray, splits: int = 10, *, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", NeurIPS):
    exp(E_x KL(p(y|x) || p(y))), computed on `splits` equal parts, returned as (mean, std over parts).

    Follows torch-fidelity's isc_features_to_metric: the rows are first shuffled with
    RandomState(seed).permutation (so class-sorted samples from a conditional generator do not give
    one-class splits), part i is rows [i*N//splits, (i+1)*N//splits), and std has ddof=0.
    Ranges from 1 (every image gets the same distribution) to the number of classes (confident and
    balanced). KL terms use scipy's rel_entr, so probabilities that underflow to exactly 0 add 0.
    """
    p = check_probs("probs", probs)
    n = len(p)
    if not isinstance(splits, int | np.integer) or splits < 1:
        raise ValueError(f"splits: expected a positive integer, got {splits!r}")
    if splits > n:
        raise ValueError(f"probs: {n} samples cannot be cut into {splits} Inception Score splits")
    if shuffle:
        p = p[np.random.RandomState(seed).permutation(n)]
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)  # p(y) of this part
        scores.append(np.exp(rel_entr(part, marginal).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --- Frechet distance ---------------------------------------------------------------------------------


def features_to_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) with ddof=1, in float64: the Gaussian that FID fits to a set
    (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium", NeurIPS; the same estimator as pytorch-fid and torch-fidelity)."""
    x = as_2d("feats", feats, 2, " for a covariance")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def statistics_to_fid(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between two Gaussians (Heusel et al. 2017, eq. 6; Dowson & Landau 1982):
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

    As in pytorch-fid: scipy.linalg.sqrtm of S1 S2 in float64; if that is not finite (a singular
    product), both covariances get `eps` added to the diagonal and it is taken again; a complex result
    whose imaginary part is rounding noise (< 1e-3 on the diagonal) keeps its real part. Where the
    imaginary part is larger (nearly singular covariances, e.g. dead ReLU units) we do not fail as
    pytorch-fid does but fall back to the equivalent, always-real form tr((A S2 A)^(1/2)) with
    A = S1^(1/2), from symmetric eigendecompositions.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != mu1.shape:
        raise ValueError(f"FID: means must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"FID: covariances must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"FID: {name} contains NaN or Inf")
    diff = mu1 - mu2
    tr_covmean = _trace_sqrt_product(s1, s2, eps)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    """tr((S1 S2)^(1/2)) for covariance matrices S1, S2 (see statistics_to_fid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # "matrix is singular": handled below
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s1)) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.isfinite(covmean).all():
        if not np.iscomplexobj(covmean):
            return float(np.trace(covmean))
        if np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            return float(np.trace(covmean).real)
    return _trace_sqrt_product_symmetric(s1, s2)


def _trace_sqrt_product_symmetric(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) = tr((A S2 A)^(1/2)) with A = S1^(1/2): S1 S2 is similar to the symmetric PSD
    A S2 A, so both have the same non-negative eigenvalues; eigh never returns complex values."""
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    w = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    a = as_2d("feats_a", feats_a, 2, " for FID")
    b = as_2d("feats_b", feats_b, 2, " for FID")
    same_width("feats_a", a, "feats_b", b)
    return statistics_to_fid(*features_to_statistics(a), *features_to_statistics(b))


# --- FID without its sample-count bias ----------------------------------------------------------------

FID_INF_POINTS = 15  # sample counts on the fitted line
FID_INF_SMALLEST = 0.3  # the smallest count, as a share of the set (measured: docs/scores.md)


def fid_inf_sizes(n: int, points: int = FID_INF_POINTS, smallest: float = FID_INF_SMALLEST, dim: int = 0) -> np.ndarray:
    """The sample counts fid_inf fits: `points` counts evenly spaced in 1/N from n*smallest up to n, and
    none below twice the feature dimension `dim` (a covariance of fewer points than dimensions is singular
    and its FID leaves the 1/N line), unless that leaves less than n/2 to n."""
    lo = max(int(n * smallest), min(2 * dim, n // 2), 2)
    return np.unique(np.round(1 / np.linspace(1 / lo, 1 / n, points)).astype(int))


def fid_curve(
    feats: np.ndarray, stats_ref: tuple[np.ndarray, np.ndarray], sizes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """FID against fixed reference statistics (mean, covariance) of a random subset of `feats` (drawn
    without replacement) of each size in `sizes` -> (len(sizes),); the whole set where the size is N."""
    mu_ref, sigma_ref = stats_ref
    # Many FIDs against one reference: its square root A = S_ref^(1/2) once, then tr((S A... )) from the
    # eigenvalues of the symmetric A S A (as _trace_sqrt_product_symmetric): a 128 x 128 eigvalsh takes
    # about a tenth of scipy's sqrtm of S_ref S, and gives the same trace to rounding.
    w, v = np.linalg.eigh((sigma_ref + sigma_ref.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_ref = float(np.trace(sigma_ref))
    out = np.empty(len(sizes))
    for i, n in enumerate(sizes):
        rows = rng.choice(len(feats), int(n), replace=False) if n < len(feats) else slice(None)
        mu, sigma = features_to_statistics(feats[rows])
        diff = mu - mu_ref
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma @ root), 0, None)).sum()
        out[i] = float(diff.dot(diff) + np.trace(sigma) + tr_ref - 2 * tr_covmean)
    return out


def curve_to_fid_inf(sizes: np.ndarray, fids: np.ndarray) -> float:
    """The least-squares line fids = a + b / sizes, at 1/N = 0: its intercept a."""
    _slope, intercept = np.polyfit(1.0 / np.asarray(sizes, np.float64), np.asarray(fids, np.float64), 1)
    return float(intercept)


def fid_inf(
    feats: np.ndarray,
    feats_ref: np.ndarray,
    *,
    seed: int = 0,
    points: int = FID_INF_POINTS,
    smallest: float = FID_INF_SMALLEST,
) -> float:
    """FID extrapolated to infinitely many samples (Chong & Forsyth 2020, "Effectively Unbiased FID and
    Inception Score and Where to Find Them", CVPR). FID's bias falls as 1/N, so FID is computed at `points`
    sample counts from N*`smallest` to N (random subsets of `feats`, seeded) and a least-squares line
    FID = a + b / N is fitted; its intercept a is the score. The reference set is used whole: its own
    finite-size term is the same for every set scored against it, so it stays in (the real reference's
    fid_inf is not 0). Unlike FID, it does not depend on how many samples were scored."""
    ref = as_2d("feats_ref", feats_ref, 2, " for FID")
    return statistics_to_fid_inf(feats, features_to_statistics(ref), seed=seed, points=points, smallest=smallest)


def statistics_to_fid_inf(
    feats: np.ndarray,
    stats_ref: tuple[np.ndarray, np.ndarray],
    *,
    seed: int = 0,
    points: int = FID_INF_POINTS,
    smallest: float = FID_INF_SMALLEST,
) -> float:
    """fid_inf of `feats` against reference statistics (mean, covariance) computed once (FID during training)."""
    x = as_2d("feats", feats, 20, " for fid_inf (a line through FIDs of subsets)")
    if x.shape[1] != len(stats_ref[0]):
        raise ValueError(f"fid_inf: features have {x.shape[1]} columns, the reference {len(stats_ref[0])}")
    sizes = fid_inf_sizes(len(x), points, smallest, x.shape[1])
    return curve_to_fid_inf(sizes, fid_curve(x, stats_ref, sizes, np.random.default_rng(seed)))


# --- Kernel distance ----------------------------------------------------------------------------------


def _polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    base = x @ y.T
    base *= gamma
    base += coef0
    if not float(degree).is_integer() or degree < 1:
        return base**degree
    k = base.copy()
    for _ in range(int(degree) - 1):  # repeated products: 5x faster than ** on a 1000 x 1000 float64 array
        k *= base
    return k


def kernels_to_mmd2(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD^2 estimate from the three m x m kernel matrices (Gretton et al. 2012, "A Kernel
    Two-Sample Test", JMLR, eq. 3): the diagonals of K_XX and K_YY are left out, K_XY is not."""
    m = len(k_xx)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def features_to_kid(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1,
    seed: int = 0,
    rounds_out: list[float] | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", ICLR): the unbiased
    MMD^2 with kernel k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/D by default, averaged over
    `subsets` random pairs of subsets drawn without replacement; returns (mean, std with ddof=0).

    Same draws as torch-fidelity's kid_features_to_metric with rng_seed=seed (RandomState.choice for
    set a, then set b, in each round). `subset_size` is capped at the smaller set; when that takes the
    whole of both sets, one round is computed (std 0). Can be slightly negative when the sets come from
    the same distribution.
    """
    a = as_2d("feats_a", feats_a, 2, " for KID")
    b = as_2d("feats_b", feats_b, 2, " for KID")
    same_width("feats_a", a, "feats_b", b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID: needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, len(a), len(b))
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    k = lambda x, y: _polynomial_kernel(x, y, degree, gamma, coef0)  # noqa: E731
    # A set of exactly m points is drawn whole every round, only reordered, and the MMD^2 estimate does
    # not depend on the order: its kernel matrix is computed once; with both sets whole, one round is the
    # answer (all rounds are equal up to rounding).
    k_aa = k(a, a) if m == len(a) else None
    k_bb = k(b, b) if m == len(b) else None
    if k_aa is not None and k_bb is not None:
        whole = kernels_to_mmd2(k_aa, k(a, b), k_bb)
        if rounds_out is not None:  # the caller's list gets each round's estimate (one here)
            rounds_out.append(whole)
        return whole, 0.0
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        ia, ib = rng.choice(len(a), m, replace=False), rng.choice(len(b), m, replace=False)
        x = a if k_aa is not None else a[ia]
        y = b if k_bb is not None else b[ib]
        mmds[i] = kernels_to_mmd2(k(x, x) if k_aa is None else k_aa, k(x, y), k(y, y) if k_bb is None else k_bb)
    if rounds_out is not None:
        rounds_out.extend(mmds.tolist())
    return float(mmds.mean()), float(mmds.std())


# --- nearest neighbours -------------------------------------------------------------------------------


class _Points:
    """Points moved by -centre in the search dtype, with -2 x (for the products) and |x|^2."""

    def __init__(self, x: np.ndarray, centre: np.ndarray):
        self.x = (x - centre).astype(_DIST_DTYPE)
        self.m2 = -2 * self.x  # exact: scaling by a power of two
        self.sq = (self.x * self.x).sum(axis=1)

    def __len__(self) -> int:
        return len(self.x)


def _sq_dists(a: _Points, rows: slice, b: _Points) -> np.ndarray:
    """Squared Euclidean distances (rows of a, all of b) as |a|^2 + |b|^2 - 2 a.b: one product and two
    in-place passes. Rounding can leave tiny negatives where points coincide; every comparison here is
    between values computed the same way, so they are not clipped."""
    d = a.m2[rows] @ b.x.T
    d += b.sq[None, :]
    d += a.sq[rows, None]
    return d


def _row_blocks(n_rows: int, n_cols: int):
    step = max(1, _BLOCK // max(n_cols, 1))
    for i in range(0, n_rows, step):
        yield slice(i, min(i + step, n_rows))


def _knn_sq_radii(p: _Points, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point of the same set."""
    radii = np.empty(len(p), p.x.dtype)
    for rows in _row_blocks(len(p), len(p)):
        d = _sq_dists(p, rows, p)
        d[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # not its own neighbour
        radii[rows] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def features_to_knn_radii(feats: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance (N,) from each point to its k-th nearest other point of the same set: the radius of
    the hypersphere around it in the k-NN manifold estimate (Kynkaanniemi et al. 2019). The point itself
    is excluded; an exact duplicate counts as a neighbour at distance 0 (up to float32 rounding)."""
    _check_k(k)
    x = as_2d("feats", feats, k + 1, f" for k={k} nearest neighbours (k + 1)")
    return np.sqrt(np.maximum(_knn_sq_radii(_Points(x, x.mean(axis=0)), k), 0).astype(np.float64))


def precision_recall_density_coverage(generated: np.ndarray, real: np.ndarray, k: int = 3) -> dict[str, float]:
    """precision_recall and density_coverage together, from one blocked pass over the generated x real
    distance matrix (float32, centred) after the k-NN radii of both sets."""
    return {key: float(values.mean()) for key, values in prdc_per_point(generated, real, k).items()}


def prdc_per_point(generated: np.ndarray, real: np.ndarray, k: int = 3) -> dict[str, np.ndarray]:
    """What precision, recall, density and coverage average, point by point: precision and density per
    GENERATED point (inside some real sphere: 0/1; how many real spheres hold it / k), recall and coverage
    per REAL point (inside some generated sphere; its nearest generated point inside its own sphere).
    Their bootstrap gives the intervals (bootstrap_mean_interval)."""
    _check_k(k)
    why = f" for k={k} nearest neighbours (k + 1)"
    gen = as_2d("generated", generated, k + 1, why)
    ref = as_2d("real", real, k + 1, why)
    same_width("generated", gen, "real", ref)
    centre = ref.mean(axis=0)
    gen, ref = _Points(gen, centre), _Points(ref, centre)
    r_gen = _knn_sq_radii(gen, k)  # (N,) squared radii
    r_ref = _knn_sq_radii(ref, k)  # (M,)
    in_real = np.zeros(len(gen), bool)  # generated point inside some real sphere (precision)
    real_in_gen = np.zeros(len(ref), bool)  # real point inside some generated sphere (recall)
    nn_gen = np.full(len(ref), np.inf, _DIST_DTYPE)  # squared distance to the nearest generated
    spheres_hit = np.zeros(len(gen), np.int64)  # how many real spheres contain each generated point (density)
    for rows in _row_blocks(len(gen), len(ref)):
        d = _sq_dists(gen, rows, ref)  # (b, M)
        inside = d <= r_ref[None, :]
        in_real[rows] = inside.any(axis=1)
        spheres_hit[rows] = np.count_nonzero(inside, axis=1)
        real_in_gen |= (d <= r_gen[rows, None]).any(axis=0)
        np.minimum(nn_gen, d.min(axis=0), out=nn_gen)
    return {
        "precision": in_real.astype(np.float64),
        "recall": real_in_gen.astype(np.float64),
        "density": spheres_hit / k,
        "coverage": (nn_gen <= r_ref).astype(np.float64),
    }


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
    Assessing Generative Models", NeurIPS). Each set's manifold is the union of spheres around its points
    with radius the distance to the point's k-th nearest neighbour in the set.

    precision = share of GENERATED points inside the real manifold (fidelity);
    recall = share of REAL points inside the generated manifold (diversity). The generated set comes
    first, as in torch-fidelity's prc_features_to_metric; a boundary point (distance == radius) is inside.
    """
    out = precision_recall_density_coverage(generated, real, k)
    return out["precision"], out["recall"]


def density_coverage(generated: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative
    Models", ICML), with k-NN spheres around the REAL points only (so outliers among the generated
    samples cannot inflate them):

    density = (1 / kN) sum_i sum_j 1[gen_i in sphere(real_j)], about 1 when the sets match, unbounded;
    coverage = share of real points whose sphere holds at least one generated point, in [0, 1].
    """
    out = precision_recall_density_coverage(generated, real, k)
    return out["density"], out["coverage"]


def nearest_neighbour_distances(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Euclidean distance (N,) from each query to its nearest point in `pool` (float32 search, blocked)."""
    q = as_2d("queries", queries, 1)
    p = as_2d("pool", pool, 1)
    same_width("queries", q, "pool", p)
    centre = p.mean(axis=0)
    q, p = _Points(q, centre), _Points(p, centre)
    best = np.full(len(q), np.inf, _DIST_DTYPE)  # min over the pool of |p|^2 - 2 q.p
    for cols in _row_blocks(len(p), len(q)):  # pool-major: 10-20% faster than query-major here
        d = q.m2 @ p.x[cols].T
        d += p.sq[None, cols]
        np.minimum(best, d.min(axis=1), out=best)
    return np.sqrt(np.maximum(best.astype(np.float64) + q.sq, 0))


# --- memorisation -------------------------------------------------------------------------------------


def features_to_memorisation_threshold(test_feats: np.ndarray, train_feats: np.ndarray) -> float:
    """Median distance from a real test image to its nearest training image (in feature space)."""
    return float(np.median(nearest_neighbour_distances(test_feats, train_feats)))


def memorisation_share(
    generated_feats: np.ndarray,
    train_feats: np.ndarray,
    test_feats: np.ndarray,
    train_feats_for_threshold: np.ndarray | None = None,
    *,
    threshold: float | None = None,
) -> float:
    """Share of generated samples that sit closer to a training image than real unseen images do.

    A sample counts as memorised when the Euclidean distance from its features to the nearest training
    image's features is below the threshold t = median over the real TEST images of the same
    nearest-training-image distance (against `train_feats_for_threshold`, default `train_feats`: the pool
    size shifts NN distances, so both sides should search the same pool). Test images were never seen in
    training, so t is what "as close as a new digit gets" looks like: a generator that draws new digits
    from the data distribution scores about 0.5, one that copies its training images scores near 1, one
    whose samples are far from all data scores near 0. The median (not a low quantile) keeps the threshold
    stable on a few thousand test images; compare against the score of real held-out images (the
    `reference` values of `mnistgan score`), not against 0. In the spirit of the nearest-neighbour
    copy checks of Meehan et al. 2020 ("A Non-Parametric Test to Detect Data-Copying in Generative
    Models", AISTATS), which also compare generated-to-train with test-to-train distances.

    `threshold` may be passed precomputed (features_to_memorisation_threshold) to skip the test-to-train
    search.
    """
    gen = as_2d("generated_feats", generated_feats, 1)
    train = as_2d("train_feats", train_feats, 1)
    same_width("generated_feats", gen, "train_feats", train)
    if threshold is None:
        test = as_2d("test_feats", test_feats, 1)
        same_width("test_feats", test, "train_feats", train)
        pool = train if train_feats_for_threshold is None else train_feats_for_threshold
        threshold = features_to_memorisation_threshold(test, pool)
    return float((nearest_neighbour_distances(gen, train) < threshold).mean())
