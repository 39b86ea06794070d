"""`mnistgan COMMAND ...`: one console script, one module per subcommand.

Each subcommand is a module with `main(argv: list[str] | None) -> int`, imported only when it runs, so
`mnistgan --help` starts without importing torch. To add one, add a line to COMMANDS.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv) -> int, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("mnistgan.score", "score generated digits (.npy/.npz or PNG folder) against MNIST"),
    "bench": ("mnistgan.bench", "time training (plain vs fast path), time to quality and the metric suite"),
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
