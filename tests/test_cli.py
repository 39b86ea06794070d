"""mnistgan.cli: one `mnistgan` command for every entry point a user runs, one exit-code convention."""

import ast
import runpy
import sys
from pathlib import Path

import pytest

from mnistgan import cli

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnistgan"


def test_help_lists_every_command_and_unknown_ones_exit_2(capsys):
    assert cli.main(["--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == list(cli.COMMANDS)
    assert cli.main(["nonsense"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == (
        f"mnistgan: error: unknown command 'nonsense'; commands: {', '.join(cli.COMMANDS)}"
    )
    assert cli.main([]) == cli.EXIT_BAD_INPUT


def modules_with_a_main() -> set[str]:
    """Every module of the package that defines a top-level main(): an entry point someone runs."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body) and path.name != "cli.py":
            found.add(".".join(("mnistgan", *path.relative_to(PACKAGE).with_suffix("").parts)))
    return found


def test_every_module_with_a_main_is_a_command():
    assert modules_with_a_main() == {module for module, _, _ in cli.COMMANDS.values()}


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_has_help_and_one_line_usage_errors(name, capsys):
    assert cli.main([name, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out
    assert cli.main([name, "--no-such-option"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mnistgan {name}: error: "), err  # a usage error, in one line


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_module_runs_with_python_m(name, capsys, monkeypatch):
    """`python -m <module> --help` runs the command (the module executed as __main__, as python -m does)."""
    module, leading, _ = cli.COMMANDS[name]
    monkeypatch.setattr(sys, "argv", [module, *leading, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert e.value.code == 0, module
    assert "usage:" in capsys.readouterr().out, module
