"""Shared start-up for the stage scripts: this checkout's src/ first, one-line errors, params."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

# Queued `dvc exp run` jobs run in temporary copies of the repo: import the copy's own src/, never an
# installed or editable package that points at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mnistgan.config import RECORD_ENV, Params, load_params, recorded_reads  # noqa: E402
from mnistgan.errors import UserError  # noqa: E402

EXIT_BAD_INPUT = 2


def run_stage(name: str, main: Callable[[Params], int | None]) -> None:
    """Load params.yaml, run `main`, and turn expected failures into one line on stderr and exit 2."""
    try:
        params = load_params("params.yaml")
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
    record = os.environ.get(RECORD_ENV)
    if record and code == 0:  # the params keys this stage read (tests compare them with dvc.yaml)
        Path(record).mkdir(parents=True, exist_ok=True)
        (Path(record) / f"{name}.json").write_text(json.dumps(recorded_reads()) + "\n")
    sys.exit(code)
