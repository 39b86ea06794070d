"""`mnistgan COMMAND ...`: one console script for every command a user runs.

Each command is a module's `main(argv: list[str] | None) -> int` (a module may serve several commands,
told apart by a leading argument, as `mnistgan compare` and `mnistgan results` are `mnistgan.lab.report`'s
two). The module is imported only when its command runs, so `mnistgan --help` starts without importing
torch. Every command reports bad input in one line with EXIT_BAD_INPUT and Ctrl-C with 130 (`run_command`).
To add one, add a line to COMMANDS; `python -m <module>` keeps working for the Makefile.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from mnistgan.errors import EXIT_BAD_INPUT, UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with EXIT_BAD_INPUT (it prints the whole usage
    otherwise). Subcommands build their parsers from it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """A subcommand's main: parse `argv`, run `body(args)`, and turn a user's error (UserError, or one of
    `errors`) into one line on stderr with EXIT_BAD_INPUT, and Ctrl-C into 'interrupted' and 130."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return int(e.code or 0)
    try:
        return int(body(args) or 0)
    except (UserError, *errors) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


# name -> (module with main(argv) -> int, the arguments put before the user's, one-line description)
COMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "score": ("mnistgan.evaluation.score_cli", (), "score generated digits (.npy/.npz or PNG folder) against MNIST"),
    "generate": ("mnistgan.gan.generate", (), "digits from a trained generator: --digit 7 --n 64 --out sevens.png"),
    "compare": ("mnistgan.lab.report", ("compare",), "reports/compare.md and .html: the latest runs side by side"),
    "results": ("mnistgan.lab.report", ("results",), "the recipes' results table from the MLflow runs"),
    "ui": ("mnistgan.lab.ui", (), "MLflow UI on this project's runs table (model-training view); --port"),
    "tracking": ("mnistgan.sync", (), "tracking sync: give the last training run the scores of eval.json"),
    "verify": ("mnistgan.lab.verify", (), "rerun HEAD's pipeline in a clone: exact, within noise, or not reproduced"),
    "spread": ("mnistgan.lab.spread", (), "HEAD's recipe over seeds (--seeds 0,1,2): metrics/spread.json for verify"),
    "recipes": ("mnistgan.lab.recipes", (), "queue recipes over seeds as DVC experiments (make sweep; then results)"),
    "calibrate": ("mnistgan.lab.calibrate", (), "the corruption ladder and the reading table of the scores"),
    "bench": (
        "mnistgan.lab.bench",
        (),
        "time the training step and the metric suite",
    ),
    "flops": ("mnistgan.lab.flops", (), "multiply-adds and training FLOPs per image of each model"),
    "server": (
        "mnistgan.lab.server",
        (),
        "the team's MLflow server on PostgreSQL: start | stop | status (make server)",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return (
        "usage: mnistgan COMMAND [ARGS...]\n\ncommands:\n"
        + "\n".join(lines)
        + ("\n\n`mnistgan COMMAND --help` describes a command's arguments.")
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_BAD_INPUT
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mnistgan: error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module_name, leading, _ = COMMANDS[name]
    return int(importlib.import_module(module_name).main([*leading, *rest]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
