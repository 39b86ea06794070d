"""dvc.yaml must list every src module a stage imports (directly or through other modules, lazy imports
included) and every params key it reads, so DVC reruns exactly what changed."""

from pathlib import Path

import pytest
import yaml
from import_graph import ROOT, closure

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_imported_module_is_a_dependency(stage):
    deps = set(STAGES[stage]["deps"])
    script = Path(STAGES[stage]["cmd"].split()[1])  # python stages/<script>.py [section]
    assert str(script) in deps and "stages/_common.py" in deps
    needed = closure(script) | closure(Path("stages/_common.py"))
    assert needed - deps == set(), f"{stage} imports modules dvc.yaml does not list"


def test_params_keys_exist():
    from mnistgan.config import flatten, load_params

    known = set(flatten(load_params(ROOT / "params.yaml")))
    for stage in STAGES.values():
        for key in stage.get("params", []):
            if key == {"params.yaml": None}:  # the check stage: every key of the file
                continue
            assert key in known, key


def test_every_other_stage_waits_for_the_check():
    ok = "${paths.params_ok}"
    assert STAGES["check"]["outs"][0] == {ok: {"cache": False, "persist": True}}
    assert STAGES["check"]["params"] == [{"params.yaml": None}]
    for name, stage in STAGES.items():
        assert name == "check" or ok in stage["deps"], name
