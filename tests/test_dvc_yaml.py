"""dvc.yaml must list every src module a stage imports (directly or through other modules, lazy imports
included) and every params key it reads, so DVC reruns exactly what changed."""

import ast
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


def paths_keys_used(script: Path) -> set[str]:
    """The params.yaml `paths` keys a stage script names (`paths.X` or `params.paths.X`): the files it opens,
    since stages reach files only through params.yaml's paths section."""
    tree = ast.parse((ROOT / script).read_text())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and (
            (isinstance(node.value, ast.Name) and node.value.id == "paths")
            or (isinstance(node.value, ast.Attribute) and node.value.attr == "paths")
        )
    }


def declared_files(stage: dict) -> set[str]:
    """Every path a stage declares: deps, and outs, metrics and plots (a stage may reopen its own output, as
    train resumes from its checkpoint)."""
    found = set(stage.get("deps", []))
    for section in ("outs", "metrics", "plots"):
        for entry in stage.get(section, []):
            found |= set(entry) if isinstance(entry, dict) else {entry}
    return found


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "check"])
def test_every_file_a_stage_names_is_declared(stage):
    """A file a stage reads but dvc.yaml does not list would not rerun the stage when it changes (the run-time
    twin, test_pipeline.py::test_every_file_a_stage_opens_is_declared, records the files each stage opened)."""
    script = Path(STAGES[stage]["cmd"].split()[1])
    undeclared = {f"${{paths.{k}}}" for k in paths_keys_used(script)} - declared_files(STAGES[stage])
    assert not undeclared, f"{stage} opens files dvc.yaml does not list: {sorted(undeclared)}"
