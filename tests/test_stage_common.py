"""stages/_common.py: the recording of the params keys a stage reads (only when asked for)."""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))

from _common import recording  # noqa: E402

from mnistgan.config import Params, TrainConfig, flatten, to_dict  # noqa: E402


def test_recording_notes_each_field_read_and_nothing_else():
    reads: set[str] = set()
    params = recording(Params(), reads)
    assert reads == set()
    assert params.train.lr == 4e-4 and params.seed == 0 and params.sample.n == 10000
    _ = params.paths.samples, params.tracking.experiment  # where things go, not behaviour: not recorded
    assert reads == {"train.lr", "seed", "sample.n"}


def test_recorded_params_still_behave_as_dataclasses():
    reads: set[str] = set()
    params = recording(Params(), reads)
    assert isinstance(params.train, TrainConfig)
    assert flatten(params) == flatten(Params()) and reads == set()  # logging every param is not a read
    assert to_dict(params.train) == to_dict(TrainConfig())  # saved into files: every train key is read
    assert reads == {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
    assert dataclasses.replace(params.train, lr=1e-3).lr == 1e-3


def test_plain_params_have_no_recording_hook():
    assert "__getattribute__" not in vars(TrainConfig) and "__getattribute__" not in vars(Params)
