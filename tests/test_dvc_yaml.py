"""dvc.yaml must list every src module a stage imports (directly or through other modules, lazy imports
included) and every params key it reads, so DVC reruns exactly what changed."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def mnistgan_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mnistgan":
            if node.module == "mnistgan":
                names |= {f"mnistgan.{a.name}" for a in node.names}
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "mnistgan"}
    return names


def module_file(name: str) -> Path:
    rel = Path("src", *name.split("."))
    return rel.with_suffix(".py") if (ROOT / rel.with_suffix(".py")).exists() else rel / "__init__.py"


def closure(script: Path) -> set[str]:
    seen, todo = set(), [script]
    while todo:
        for name in mnistgan_imports(ROOT / todo.pop()):
            f = module_file(name)
            if str(f) not in seen and (ROOT / f).exists():
                seen.add(str(f))
                todo.append(f)
    return {s for s in seen if not s.endswith("__init__.py")}


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
