"""`mnistgan COMMAND ...`: one console script, one module per subcommand.

Each subcommand is a module with `main(argv: list[str] | None) -> int`, imported only when it runs, so
`mnistgan --help` starts without importing torch. To add one, add a line to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2  # every command: bad arguments or input files -> one line on stderr and this code


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with EXIT_BAD_INPUT (it prints the whole usage
    otherwise). Subcommands build their parsers from it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run_command(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
                argv: list[str] | None, errors: tuple[type[BaseException], ...] = ()) -> int:  # fmt: skip
    """A subcommand's main: parse `argv`, run `body(args)`, and turn a user's error (UserError, or one of
    `errors`) into one line on stderr with EXIT_BAD_INPUT, and Ctrl-C into 'interrupted' and 130."""
    from mnistgan.errors import UserError

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


# name -> (module with main(argv) -> int, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("mnistgan.score", "score generated digits (.npy/.npz or PNG folder) against MNIST"),
    "generate": ("mnistgan.generate", "digits from a trained generator: --digit 7 --n 64 --out sevens.png"),
    "bench": ("mnistgan.bench", "time training (plain vs fast path), time to quality and the metric suite"),
    "verify": ("mnistgan.verify", "rerun the pipeline of HEAD in a temporary clone; compare outputs with dvc.lock"),
    "ui": ("mnistgan.ui", "MLflow UI on this project's runs table (model-training view); --port"),
    "server": ("mnistgan.server", "the team's MLflow server on PostgreSQL: start | stop | status (make server)"),
    "tracking": ("mnistgan.tracking", "sync: close runs of killed processes, log scores of a skipped evaluate"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "usage: mnistgan COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) + (
        "\n\n`mnistgan COMMAND --help` describes a command's arguments.")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mnistgan: error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
