"""What the tracking store says about a run and its generator: the registered model's name and note, the
generator model's signature and requirements, a run's description and its model version's tags.

Pure functions and constants (mlflow is passed in where a type of its own is needed); mnistgan.tracking
does the logging.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mnistgan.config import flatten

REGISTERED_MODEL = "mnistgan-generator"
REGISTERED_MODEL_NOTE = (
    "GAN generators of the mnistgan pipeline, one version per training run, tagged with the run's scores. "
    "Load with mlflow.pyfunc.load_model('models:/mnistgan-generator/latest'); predict takes a DataFrame with "
    "int columns digit (0-9, -1 = any) and seed, one image per row, and returns uint8 (rows, 28, 28)."
)
# The model's code (models-from-code: MLflow stores the file and runs it at logging, to check the input example,
# and at loading). Named by path, not imported: only the train stage logs the model (dvc.yaml lists the file
# among its deps), and the other stages that import this module do not depend on it.
GENERATOR_MODEL_CODE = Path(__file__).parent / "gan" / "pyfunc_generator.py"
PACKAGE_SOURCE = Path(__file__).parent  # travels with the model (code_paths): it loads without this repo
GENERATOR_ARTIFACT = "generator"  # the key of the generator file among the model's artifacts
GENERATOR_INPUT_EXAMPLE = {"digit": [7, 7, -1], "seed": [0, 1, 2]}
NOTE_TAG = "mlflow.note.content"  # the description MLflow's UI shows for a run (and for an experiment)
CHANGED_TAG = "params_changed"  # what the run changed against the commit's params.yaml


def generator_signature(mlflow: Any) -> Any:
    """DataFrame (digit: long, seed: long) -> uint8 (rows, 28, 28); param truncation (0 = off)."""
    from mlflow.models import ModelSignature  # lazy: mlflow is optional
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec  # lazy: mlflow is optional

    return ModelSignature(
        inputs=Schema([ColSpec("long", "digit"), ColSpec("long", "seed")]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 28, 28))]),
        params=ParamSchema([ParamSpec("truncation", "double", 0.0)]),
    )


def generator_requirements() -> list[str]:
    """What loading the generator model needs, pinned to this environment's versions (stated, not
    inferred: MLflow's inference imports the model in a subprocess and takes seconds)."""
    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy", "pandas", "pyyaml")]


def params_changes(params: Any, cwd: Path | None = None) -> str:
    """The keys where `params` differ from the params.yaml of the commit (HEAD), as one line: what a
    `dvc exp run -S ...` changed. Paths and tracking settings are left out."""
    try:
        out = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=cwd, capture_output=True, text=True, timeout=10)
        committed = flatten(yaml.safe_load(out.stdout) or {}) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, yaml.YAMLError):
        committed = None
    if committed is None:
        return "params.yaml (no committed version to compare with)"
    now = {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(params).items()}  # yaml lists: tuples
    changed = [
        f"{k}={v}"
        for k, v in now.items()
        if not k.startswith(("paths.", "tracking.")) and committed.get(k, _MISSING) != v
    ]
    return "changed " + ", ".join(changed) if changed else "the commit's params.yaml, unchanged"


_MISSING = object()


def run_note(changed: str, scores: dict[str, Any] | None) -> str:
    """Markdown for the run's description: what it changed and, when known, its headline scores (those of
    them that `scores` holds)."""
    lines = [f"**Params**: {changed}."]
    if scores:
        g, r = scores.get("generated", {}), scores.get("real_reference", {})
        parts = []
        if "fid" in g and r.get("fid"):
            parts.append(f"FID {g['fid']:.2f} ({g['fid'] / r['fid']:.1f}x real {r['fid']:.2f})")
        if "inception_score" in g:
            parts.append(f"score {g['inception_score']:.2f} (real {r.get('inception_score', float('nan')):.2f})")
        if "precision" in g and "recall" in g:
            parts.append(f"precision/recall {g['precision']:.3f}/{g['recall']:.3f}")
        if "classes_covered" in g:
            parts.append(f"{g['classes_covered']} of 10 digits")
        lines.append(f"**Scored** ({g.get('n_samples', 'all')} samples): {', '.join(parts)}.")
    else:
        lines.append("**Scored**: not yet (the evaluate stage logs the scores).")
    return "\n\n".join(lines)


def version_tags(scores: dict[str, Any]) -> dict[str, str]:
    """The registered generator version's tags: its run's headline scores, with the real reference's FID."""
    g, r = scores.get("generated", {}), scores.get("real_reference", {})
    tags = {k: f"{g[k]:.4g}" for k in ("fid", "inception_score", "precision", "recall", "classes_covered") if k in g}
    if "fid" in g and r.get("fid"):
        tags |= {"fid_real": f"{r['fid']:.4g}", "fid_multiple_of_real": f"{g['fid'] / r['fid']:.3g}"}
    return tags
