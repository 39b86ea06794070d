import pytest

from mnistgan.config import TrainConfig
from mnistgan.lab import recipes
from mnistgan.lab.recipes import CANDIDATES, FIRST_ROUND, default_recipe, recipe_name, recipe_overrides


def test_recipes_are_changes_to_params_and_found_by_their_params():
    for name in CANDIDATES:
        TrainConfig(**recipe_overrides(name))  # every recipe is a valid config
    assert recipe_overrides("ema-warmup") == default_recipe() | FIRST_ROUND  # the first rounds' start
    assert recipe_overrides("default") == default_recipe()  # params.yaml's, unchanged
    params = {k: str(v) for k, v in recipe_overrides("conditional").items()} | {"steps": "3000"}
    assert recipe_name(params) == "conditional"
    assert recipe_name(params | {"lr": "0.1"}) is None
    upsampled = {k: str(v) for k, v in recipe_overrides("default-upsample-nearest").items()}
    assert recipe_name(upsampled) == "default-upsample-nearest"  # not "default", whose keys it also matches
    # the previous default (no R1) and the hour-long recipe are told apart from the default by their values
    previous = {k: str(v) for k, v in recipe_overrides("previous-default").items()}
    assert recipe_name(previous) == "previous-default"
    assert recipe_name(previous | {"r1_weight": "0.1"}) == "default"
    assert recipe_name(previous | {"r1_weight": "0.1", "steps": "100000"}) == "long"
    with pytest.raises(KeyError, match="known recipes"):
        recipe_overrides("nope")


def test_sweep_queues_only_the_keys_that_differ_from_params(capsys):
    assert recipes.main(["--dry-run", "--recipes", "default,unconditional", "--seconds", "90"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dvc exp run --queue -S seed=0,1,2 -S train.max_seconds=90.0 -S train.steps=1000000"
    assert lines[1].endswith("-S seed=0,1 -S train.max_seconds=90.0 -S train.steps=1000000 -S train.conditional=false")


def test_a_recipe_of_fixed_length_keeps_it_and_seeds_apply_to_every_recipe(capsys):
    assert recipes.main(["--dry-run", "--recipes", "default-lr-decay,default", "--seeds", "4,5"]) == 0
    decay, default = capsys.readouterr().out.splitlines()
    assert "-S seed=4,5 " in decay and "train.steps=1000000" not in decay  # the decay needs its 6,000 steps
    assert "-S train.steps=6000" in decay and "-S train.lr_decay_from=0.5" in decay
    assert default.startswith("dvc exp run --queue -S seed=4,5 ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--recipes", "nope"], "--recipes: unknown recipe 'nope'"),
        (["--recipes", "default", "--seeds", "1,x"], "--seeds: '1,x' is not a comma-separated list"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_queueing_anything(argv, message, capsys):
    assert recipes.main(["--dry-run", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""  # no dvc command printed, so none would have run
