"""Shared start-up for the stage scripts: this checkout's src/ first, one-line errors, params."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Queued `dvc exp run` jobs run in temporary copies of the repo: import the copy's own src/, never an
# installed or editable package that points at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mnistgan import numerics  # noqa: E402
from mnistgan.config import Params, load_params  # noqa: E402
from mnistgan.errors import EXIT_BAD_INPUT, UserError  # noqa: E402

# Set to a folder: a stage writes the params keys it read to <folder>/<stage>.json, the files it opened to
# <stage>.files.json; the end-to-end test holds them to dvc.yaml's params and deps. Unset: neither is recorded.
RECORD_ENV = "MNISTGAN_RECORD_PARAMS"
SECTIONS = ("prepare", "classifier", "extractor", "train", "sample", "evaluate", "numerics")  # not paths, tracking
NO_NUMBERS = ("check", "prepare")  # stages that compute no floats: numerics does not apply to them


def record_opens(opened: set[str]) -> None:
    """From now on, every file below the working directory this process opens for reading goes to `opened`."""
    root = Path.cwd().resolve()

    def opens(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | Path) and not set(str(args[1] or "r")) & set("wax+"):
            path = Path(args[0]).resolve()
            if path.is_relative_to(root) and path.is_file():
                opened.add(str(path.relative_to(root)))

    sys.addaudithook(opens)


def recording(params: Params, reads: set[str]) -> Params:
    """`params` as instances of subclasses that add every field read ("train.lr", "seed") to `reads`.
    Subclasses, not proxies: isinstance, dataclasses.asdict and replace keep working on them."""

    def record(obj: Any, section: str) -> Any:
        names = {f.name for f in dataclasses.fields(obj)}

        def getattribute(self: Any, name: str) -> Any:
            value = object.__getattribute__(self, name)
            if name in names and not dataclasses.is_dataclass(value):
                reads.add(f"{section}.{name}" if section else name)
            return value

        cls = type(obj)
        copy = object.__new__(type(f"Recording{cls.__name__}", (cls,), {"__getattribute__": getattribute}))
        copy.__dict__.update(vars(obj))
        return copy

    top = record(params, "")
    for name in SECTIONS:
        top.__dict__[name] = record(vars(params)[name], name)
    return top


def run_stage(name: str, main: Callable[[Params], int | None]) -> None:
    """Load params.yaml, run `main`, and turn expected failures into one line on stderr and exit 2."""
    record, reads, opened = os.environ.get(RECORD_ENV), set(), set()
    try:
        params = load_params("params.yaml")
        if record:
            params = recording(params, reads)
            record_opens(opened)
        if name not in NO_NUMBERS:  # before the stage's first tensor operation
            numerics.apply(params.numerics.mode, params.numerics.threads)
        code = main(params) or 0
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        code = 130
    except Exception:
        traceback.print_exc()
        code = 1
    if record and code == 0:
        Path(record).mkdir(parents=True, exist_ok=True)
        (Path(record) / f"{name}.json").write_text(json.dumps(sorted(reads)) + "\n")
        (Path(record) / f"{name}.files.json").write_text(json.dumps(sorted(opened)) + "\n")
    sys.exit(code)
