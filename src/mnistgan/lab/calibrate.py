"""`mnistgan calibrate` (`make calibrate`): calibration of the scores, a corruption ladder of real digits,
scored in every feature space.

    python -m mnistgan.lab.calibrate [--n 2000] [--n-read 10000] [--out docs/calibration]

Ladder: the last n real training images (the slice the evaluate stage takes as its reference, so the
clean set scores exactly the reference) and copies of them damaged by nine families of corruption at three
severities each. Every set is scored against the MNIST test set in every feature space (network/mode,
mnistgan.evaluation.scoring): FID and KID as multiples of the clean set's. A feature space is fit for the scores when
in every family both rise with severity; and the ladder's ranking must not depend on the network: the
Spearman correlation of the FIDs of the two independently trained networks (another seed and another
architecture) in the same mode is reported, with 0.95 as the bar.

Reading table: a few named sets (clean, noisy, blurred, collapsed, junk) of n_read images with every
headline score and the FID multiples of the evaluate stage's feature spaces, the table docs/scores.md shows.

Writes ladder.json, ladder.md (both tables and the verdict), ladder.png (FID multiple against severity,
one panel per family) under --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import FEATURE_SPACES, load_params
from mnistgan.data import load_mnist
from mnistgan.io import write_json

Corruption = Callable[[np.ndarray, np.ndarray, np.random.Generator, float], np.ndarray]
BAR = 0.95  # Spearman between networks the ladder's ranking must reach
KID_SUBSETS = 20  # KID on the ladder: the mean over 20 subset pairs of 1,000 (evaluate takes 100); enough to rank


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def additive_noise(x, y, rng, level):  # noqa: ANN001 - all corruptions share the Corruption signature
    """Uniform pixel noise of +-level (of 255) on every pixel: visible grain."""
    return _u8(x.astype(np.float64) + rng.uniform(-level, level, x.shape))


def salt_and_pepper(x, y, rng, share):  # noqa: ANN001
    """A share of the pixels set to black or white at random."""
    out = x.copy()
    hit = rng.random(x.shape) < share
    out[hit] = rng.choice(np.array([0, 255], np.uint8), size=int(hit.sum()))
    return out


def blur(x, y, rng, sigma):  # noqa: ANN001
    from scipy.ndimage import gaussian_filter  # lazy: scipy only for the ladder

    return _u8(gaussian_filter(x.astype(np.float64), sigma=(0, sigma, sigma)))


def shift(x, y, rng, pixels):  # noqa: ANN001
    """Every digit moved `pixels` in a random direction (dy, dx with max(|dy|, |dx|) = pixels), zero-filled."""
    p = int(pixels)
    offsets = [(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1) if max(abs(dy), abs(dx)) == p]
    padded = np.pad(x, ((0, 0), (p, p), (p, p)))
    out = np.empty_like(x)
    for i, k in enumerate(rng.integers(len(offsets), size=len(x))):
        dy, dx = offsets[k]
        out[i] = padded[i, p + dy : p + dy + 28, p + dx : p + dx + 28]
    return out


def dilation(x, y, rng, size):  # noqa: ANN001
    """Strokes thickened by a size x size grey dilation."""
    from scipy.ndimage import grey_dilation  # lazy: scipy only for the ladder

    return grey_dilation(x, size=(1, int(size), int(size)))


def erosion(x, y, rng, size):  # noqa: ANN001
    """Strokes thinned (and broken) by a size x size grey erosion."""
    from scipy.ndimage import grey_erosion  # lazy: scipy only for the ladder

    return grey_erosion(x, size=(1, int(size), int(size)))


def occlusion(x, y, rng, side):  # noqa: ANN001
    """A black square of side `side` at a random place over the digit: broken strokes, missing parts."""
    s = int(side)
    out = x.copy()
    tops, lefts = rng.integers(4, 24 - s + 1, len(x)), rng.integers(4, 24 - s + 1, len(x))
    for i, (t, left) in enumerate(zip(tops, lefts, strict=True)):
        out[i, t : t + s, left : left + s] = 0
    return out


def dropped_classes(x, y, rng, dropped):  # noqa: ANN001
    """Only digits 0..9-dropped, resampled to the same count: a generator that lost `dropped` classes."""
    idx = np.flatnonzero(y < 10 - int(dropped))
    return x[rng.choice(idx, size=len(x), replace=True)]


def junk_mixed_in(x, y, rng, share):  # noqa: ANN001
    """A share of the digits replaced by uniform noise images: a generator that sometimes fails outright."""
    out = x.copy()
    hit = rng.random(len(x)) < share
    out[hit] = rng.integers(0, 256, (int(hit.sum()), 28, 28), dtype=np.uint8)
    return out


FAMILIES: dict[str, tuple[Corruption, tuple[float, ...], str]] = {
    "additive noise": (additive_noise, (16, 32, 48), "+-{:g} of 255"),
    "salt and pepper": (salt_and_pepper, (0.02, 0.05, 0.1), "{:.0%} of pixels"),
    "blur": (blur, (0.5, 1.0, 1.5), "sigma {:g}"),
    "shift": (shift, (1, 2, 3), "{:g} px"),
    "dilation": (dilation, (2, 3, 4), "{:g}x{:g}"),
    "erosion": (erosion, (2, 3, 4), "{:g}x{:g}"),
    "occlusion": (occlusion, (6, 9, 12), "{:g} px square"),
    "dropped classes": (dropped_classes, (3, 6, 9), "{:g} of 10 dropped"),
    "junk mixed in": (junk_mixed_in, (0.1, 0.25, 0.5), "{:.0%} noise images"),
}

READING_SETS: list[tuple[str, str, float]] = [  # (name, family, level) for the reading table
    ("real images (no corruption)", "", 0),
    ("pixel noise +-16", "additive noise", 16),
    ("pixel noise +-48", "additive noise", 48),
    ("blur sigma 1", "blur", 1.0),
    ("shifted 2 px", "shift", 2),
    ("occluded 9 px", "occlusion", 9),
    ("5 classes only", "dropped classes", 5),
    ("2 classes only", "dropped classes", 8),
    ("1 class only (collapsed)", "dropped classes", 9),
    ("half junk", "junk mixed in", 0.5),
]


def label(family: str, level: float) -> str:
    fmt = FAMILIES[family][2]
    return fmt.format(level, level) if fmt.count("{") == 2 else fmt.format(level)


def corrupt(family: str, level: float, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Images of a ladder rung; the seed depends on the rung only, so every run makes the same sets."""
    if not family:
        return x
    rng = np.random.default_rng([seed, list(FAMILIES).index(family), int(level * 1000)])
    return FAMILIES[family][0](x, y, rng, level)


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr  # lazy: scipy only for the ladder

    return float(spearmanr(a, b).statistic)


def ladder(
    models: dict[str, Any],
    reals: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    spaces: tuple[str, ...],
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every rung in every space; the verdict per space and the agreement between networks."""
    from mnistgan.evaluation.scoring import network_features, space_scores  # lazy: torch

    rungs = [("clean", "", 0.0)] + [(f"{f}: {label(f, v)}", f, v) for f in FAMILIES for v in FAMILIES[f][1]]
    rows = []
    for name, family, level in rungs:
        images = corrupt(family, level, x, y, seed)
        feats = {net: network_features(m, images)[0] for net, m in models.items()}
        scores = {
            s: space_scores(
                feats[s.split("/")[0]], reals[s.split("/")[0]], s.split("/")[1], len(x), seed, kid_subsets=KID_SUBSETS
            )
            for s in spaces
        }
        rows.append({"set": name, "family": family or "clean", "level": level, "scores": scores})
        log(f"  {name:<40} " + "  ".join(f"{s} FID {v['fid']:9.2f}" for s, v in scores.items()))
    verdict = {}
    for s in spaces:
        clean = rows[0]["scores"][s]
        fails = []
        for f in FAMILIES:
            steps = [clean] + [r["scores"][s] for r in rows if r["family"] == f]
            for key in ("fid", "kid"):
                if not all(a[key] < b[key] for a, b in zip(steps, steps[1:], strict=False)):
                    fails.append(f"{f} ({key.upper()})")
        verdict[s] = {"rising_everywhere": not fails, "not_rising": fails}
    pairs = {}
    for i, a in enumerate(spaces):
        for b in spaces[i + 1 :]:
            pairs[f"{a} ~ {b}"] = spearman([r["scores"][a]["fid"] for r in rows], [r["scores"][b]["fid"] for r in rows])
    return {"rows": rows, "verdict": verdict, "spearman_fid": pairs}


def reading_table(
    models: dict[str, Any], reals: dict[str, Any], x: np.ndarray, y: np.ndarray, spaces: tuple[str, ...], seed: int = 0
) -> list[dict[str, Any]]:
    """The headline scores and FID multiples of the named reading sets (mnistgan.evaluation.scoring.score_all)."""
    from mnistgan.evaluation.scoring import score_all  # lazy: torch

    out = []
    for name, family, level in READING_SETS:
        result = score_all(
            corrupt(family, level, x, y, seed), models, reals, spaces, n_reference=len(x), kid_subsets=KID_SUBSETS
        )
        out.append({"set": name, **result})
    return out


def render(
    result: dict[str, Any],
    reading: list[dict[str, Any]],
    spaces: tuple[str, ...],
    read_spaces: tuple[str, ...],
    meta: dict[str, Any],
) -> str:
    lines = [
        f"# Score calibration\n\nMade by `{meta['command']}` on {meta['machine']}, {meta['date']}. Networks: "
        + "; ".join(f"{n} = {a}" for n, a in meta["networks"].items())
        + ".\n",
        f"## Corruption ladder ({meta['n']} images per set)\n",
        "FID of each set as a multiple of the clean set's FID in the same feature space (KID over "
        f"{KID_SUBSETS} subset pairs; the clean set is "
        f"{meta['n']} real training images against the test set; its FID is given in the first row).\n",
        "| set | " + " | ".join(spaces) + " |",
        "|---" * (len(spaces) + 1) + "|",
    ]
    rows = result["rows"]
    lines.append("| clean (FID) | " + " | ".join(f"{rows[0]['scores'][s]['fid']:.2f}" for s in spaces) + " |")
    for r in rows[1:]:
        cells = [f"{r['scores'][s]['fid'] / rows[0]['scores'][s]['fid']:.1f}" for s in spaces]
        lines.append(f"| {r['set']} | " + " | ".join(cells) + " |")
    lines += ["", "**FID and KID rise with severity in every family:**", ""]
    for s, v in result["verdict"].items():
        lines.append(f"- `{s}`: " + ("yes" if v["rising_everywhere"] else "no: " + ", ".join(v["not_rising"])))
    lines += ["", f"**Rank agreement of the ladder's FIDs** (Spearman over {len(rows)} sets; bar {BAR}):", ""]
    for pair, rho in result["spearman_fid"].items():
        lines.append(f"- {pair}: {rho:.3f}" + (" (different networks)" if _networks_differ(pair) else ""))
    lines += [
        "",
        f"## Reading table ({meta['n_read']} images per set)\n",
        "Headline scores on the classifier's features against the same number of real images, and FID as a "
        f"multiple of real in the evaluate stage's feature spaces ({', '.join(read_spaces)}).\n",
        "| samples | score | FID | FID real | precision | recall | classes | FID multiples | spread |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reading:
        g, ref, a = r["generated"], r["real_reference"], r["agreement"]
        multiples = " / ".join(f"{r['feature_spaces'][s]['fid_multiple']:.1f}" for s in read_spaces)
        lines.append(
            f"| {r['set']} | {g['inception_score']:.2f} | {g['fid']:.2f} | {ref['fid']:.2f} | "
            f"{g['precision']:.3f} | {g['recall']:.3f} | {g['classes_covered']} | {multiples} | "
            f"{a['fid_multiple_spread']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _networks_differ(pair: str) -> bool:
    a, b = (p.strip().split("/") for p in pair.split("~"))
    return a[0] != b[0] and a[1] == b[1]


def plot(result: dict[str, Any], spaces: tuple[str, ...], path: Path) -> None:
    import matplotlib  # lazy: only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: only to draw

    fig, axes = plt.subplots(3, 3, figsize=(13, 10), dpi=100)
    rows = result["rows"]
    for ax, family in zip(axes.flat, FAMILIES, strict=True):
        levels = [0.0, *FAMILIES[family][1]]
        for i, s in enumerate(spaces):
            clean = rows[0]["scores"][s]["fid"]
            ys = [1.0] + [r["scores"][s]["fid"] / clean for r in rows if r["family"] == family]
            ax.plot(range(4), ys, marker="o", color=f"C{i}", label=s)
        ax.set_xticks(range(4), ["clean"] + [label(family, v) for v in levels[1:]], fontsize=7)
        ax.set_yscale("log")
        ax.set_title(family, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].set_ylabel("FID / clean FID")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Corruption ladder: FID as a multiple of the clean set's, per feature space")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="mnistgan calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", default="models/classifier.pt")
    parser.add_argument("--extractor", default="models/extractor.pt")
    parser.add_argument("--data", default="data/mnist")
    parser.add_argument("--n", type=int, default=2000, help="images per ladder set")
    parser.add_argument("--n-read", type=int, default=10000, help="images per reading-table set")
    parser.add_argument(
        "--spaces",
        default="",
        help="evaluate's feature spaces for the reading table (default: params.yaml's evaluate.spaces)",
    )
    parser.add_argument("--out", default="docs/calibration")
    return run_command(parser, _run, argv)


def _run(args: argparse.Namespace) -> int:
    from mnistgan.evaluation.classifier import arch_of  # lazy: torch after parsing
    from mnistgan.evaluation.score_cli import load_network  # lazy: torch after parsing
    from mnistgan.evaluation.scoring import real_features  # lazy: torch after parsing
    from mnistgan.lab.bench import machine_line  # lazy: torch after parsing

    read_spaces = tuple(args.spaces.split(",")) if args.spaces else load_params("params.yaml").evaluate.spaces
    models = {
        "classifier": load_network(args.classifier, "--classifier"),
        "extractor": load_network(args.extractor, "--extractor"),
    }
    mnist = load_mnist(args.data)
    reals = {n: real_features(m, mnist, progress=True, name=n) for n, m in models.items()}
    x, y = mnist.x_train[-args.n :], mnist.y_train[-args.n :]
    print(f"corruption ladder, {args.n} images per set:", file=sys.stderr)
    result = ladder(models, reals, x, y, FEATURE_SPACES, log=lambda s: print(s, file=sys.stderr, flush=True))
    reading = reading_table(models, reals, mnist.x_train[-args.n_read :], mnist.y_train[-args.n_read :], read_spaces)
    meta = {
        "command": "mnistgan calibrate " + " ".join(sys.argv[2:]),
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "n": args.n,
        "n_read": args.n_read,
        "networks": {n: arch_of(m) for n, m in models.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ladder.json", {"meta": meta, **result, "reading": reading})
    text = render(result, reading, FEATURE_SPACES, read_spaces, meta)
    (out / "ladder.md").write_text(text)
    plot(result, FEATURE_SPACES, out / "ladder.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
