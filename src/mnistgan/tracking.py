"""MLflow at the edge: the only module of the package that imports mlflow (lazily).

One pipeline run is one MLflow run. The train stage opens it and writes its id to `metrics/train.json`;
the sample and evaluate stages reopen that run to add the sample grid and the final scores, so a run
holds params, loss curves, images and scores together. Without mlflow installed, or with
`tracking.required: false` and an unreachable store, a `NullRun` stands in and nothing is logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mnistgan import stale_runs
from mnistgan.config import flatten
from mnistgan.descriptions import (
    CHANGED_TAG,
    GENERATOR_ARTIFACT,
    GENERATOR_INPUT_EXAMPLE,
    GENERATOR_MODEL_CODE,
    NOTE_TAG,
    PACKAGE_SOURCE,
    REGISTERED_MODEL,
    REGISTERED_MODEL_NOTE,
    generator_requirements,
    generator_signature,
    params_changes,
    run_note,
    version_tags,
)
from mnistgan.errors import InputError, TrackingError
from mnistgan.pictures import image_grid
from mnistgan.store import check_store, refused

DEFAULT_DB = "mlflow.db"
ARTIFACTS = "mlartifacts"


def repo_root(start: Path | None = None) -> Path:
    """The repository that owns the store.

    Queued `dvc exp run` jobs execute in temporary copies under `<repo>/.dvc/tmp/exps/`; they must log
    to the original repo's store, so the copy's path is traced back to that repo.
    """
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def tracking_uri(start: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else SQLite `mlflow.db` at the repo root by absolute path."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root(start) / DEFAULT_DB}"


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def run_tags(fingerprint: dict[str, Any]) -> dict[str, str]:
    """The run's tags: the commit, the host, the device, and the platform fingerprint (mnistgan.numerics) as
    `platform.<key>`, so runs can be filtered by CPU, library path or version in the UI."""
    tags = {
        "git_commit": git_commit(),
        "torch_version": str(fingerprint.get("torch")),
        "cuda_version": str(fingerprint.get("cuda")),
        "python_version": platform.python_version(),
        "device": str(fingerprint.get("device")),
        "host": platform.node(),
    }
    tags |= {f"platform.{k}": str(v) for k, v in fingerprint.items()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


# SQLite allows one writer at a time; two experiments running side by side (`dvc queue start -j 2`)
# can meet "database is locked" (and, on a fresh store, a race creating the tables). Such errors are
# transient: retry with jittered backoff for up to a minute instead of failing the stage.
_TRANSIENT = ("database is locked", "database table is locked", "already exists", "UNIQUE constraint failed")


def with_retry(fn: Any, *args: Any, budget_s: float = 60.0, **kwargs: Any) -> Any:
    deadline, delay = time.monotonic() + budget_s, 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not any(t in str(e) for t in _TRANSIENT) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


@contextmanager
def store_init_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock, shared by every process on this machine, around the first use of a
    SQLite store. MLflow creates and migrates the tables when a process first opens a store; two
    processes doing that at once on a fresh `mlflow.db` (`dvc queue start -j 2`) fail with errors such
    as "duplicate column name". The lock file lives in the temp folder, keyed by the store's URI."""
    try:
        import fcntl  # POSIX only (deliberately lazy)
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"mnistgan-store-{key}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class NullRun:
    """Stands in for an MLflow run when tracking is off: every call does nothing."""

    run_id = ""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str | Path, folder: str | None = None) -> None: ...
    def log_dataset(
        self, name: str, features: np.ndarray, targets: np.ndarray, source: str, digest: str, context: str
    ) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_generator_model(self, generator_path: str | Path) -> None: ...
    def describe(self, changed: str | None = None, scores: dict[str, Any] | None = None) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class Run(NullRun):
    """A thin wrapper over one active MLflow run."""

    def __init__(self, mlflow: Any, run_id: str):
        self.mlflow, self.run_id = mlflow, run_id
        self.client = mlflow.MlflowClient()

    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow params are strings of at most a few hundred characters; ours are scalars.
        with_retry(self.mlflow.log_params, {k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        with_retry(self.mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        with_retry(self.mlflow.log_image, np.asarray(image, np.uint8), key=key, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        with_retry(self.mlflow.log_artifact, str(path), artifact_path=folder)

    def log_dataset(
        self, name: str, features: np.ndarray, targets: np.ndarray, source: str, digest: str, context: str
    ) -> None:
        """The run's data as an MLflow dataset input (the "Dataset" column of the runs table)."""
        dataset = self.mlflow.data.from_numpy(features, source=source, targets=targets, name=name, digest=digest)
        with_retry(self.mlflow.log_input, dataset, context=context)

    def set_tags(self, tags: dict[str, str]) -> None:
        with_retry(self.mlflow.set_tags, tags)

    def log_generator_model(self, generator_path: str | Path) -> None:
        """The sampling generator as an MLflow Model (pyfunc: (digit, seed) rows -> uint8 images), shown
        under the run's logged models and registered as a new version of REGISTERED_MODEL."""
        with _quiet_mlflow_logs():
            info = with_retry(
                self.mlflow.pyfunc.log_model,
                name="generator",
                python_model=str(GENERATOR_MODEL_CODE),
                artifacts={GENERATOR_ARTIFACT: str(generator_path)},
                code_paths=[str(PACKAGE_SOURCE)],  # the package's source: loads without this repo
                signature=generator_signature(self.mlflow),
                input_example=GENERATOR_INPUT_EXAMPLE,
                pip_requirements=generator_requirements(),
                registered_model_name=REGISTERED_MODEL,
            )
        if not self.client.get_registered_model(REGISTERED_MODEL).description:
            with_retry(self.client.update_registered_model, REGISTERED_MODEL, description=REGISTERED_MODEL_NOTE)
        version = info.registered_model_version
        if version is not None:
            note = f"Generator of run {self.run_id} (run name {self.run_name()}); its scores: this version's tags"
            with_retry(self.client.update_model_version, REGISTERED_MODEL, str(version), description=note)

    def run_name(self) -> str:
        return with_retry(self.client.get_run, self.run_id).info.run_name

    def describe(self, changed: str | None = None, scores: dict[str, Any] | None = None) -> None:
        """The run's description in the UI (`mlflow.note.content`): what it changed against the commit's
        params.yaml (given by the train stage) and, once evaluate has them, what it scored. With scores,
        the registered generator version of this run is tagged with them too."""
        tags = with_retry(self.client.get_run, self.run_id).data.tags
        changed = changed if changed is not None else tags.get(CHANGED_TAG, "")
        note = run_note(changed, scores)
        with_retry(self.mlflow.set_tags, {CHANGED_TAG: changed, NOTE_TAG: note})
        if scores:
            versions = with_retry(
                self.client.search_model_versions, f"name='{REGISTERED_MODEL}' and run_id='{self.run_id}'"
            )
            for v in versions:
                for key, value in version_tags(scores).items():
                    with_retry(self.client.set_model_version_tag, REGISTERED_MODEL, v.version, key, value)

    def end(self, status: str = "FINISHED") -> None:
        with_retry(self.mlflow.end_run, status=status)


@contextmanager
def _quiet_mlflow_logs() -> Iterator[None]:
    """MLflow logs INFO lines while saving a model (environment notes, 'Created version'): keep stderr for
    the pipeline's own progress."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_mlflow(required: bool) -> Any:
    try:
        import mlflow  # lazy: mlflow is optional (NullRun without it)
    except ImportError:
        if required:
            raise TrackingError(
                "mlflow is not installed; install it or set tracking.required: false to run untracked"
            ) from None
        return None
    return mlflow


# The experiment's kind for MLflow 3 ("Machine learning", not GenAI). MLflow 3.17's UI no longer picks its view
# by this tag but by the address's `workflowType` (else the browser's last choice, GenAI at first: traces, token
# usage); `mnistgan ui` (`make ui`) prints an address with `workflowType=machine_learning`.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# The experiment's description: MLflow shows the tag `mlflow.note.content` on the experiment's page.
EXPERIMENT_NOTE = (
    "GAN runs of the mnistgan pipeline (MNIST digits): one run per training, with its params, loss curves, "
    "sample grids during training (images, key `samples`), final scores (`generated.*`) beside the same "
    "scores for real MNIST images (`real_reference.*`), and tags naming the git commit (`git_commit`) and "
    "the DVC experiment (`dvc_exp_name`)."
)


def experiment_id(mlflow: Any, name: str, root: Path) -> str:
    """The id of experiment `name`, created when missing (artifacts under `root` for a local store), with its
    description and kind tags added when absent (experiments made by older code)."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        try:
            # Absolute artifact root so queued experiments (temporary copies) store artifacts here too.
            # A server (http) keeps artifacts where it chooses (`make server` serves them): no local path then.
            local = not mlflow.get_tracking_uri().startswith(("http://", "https://"))
            exp_id = mlflow.create_experiment(
                name,
                artifact_location=(root / ARTIFACTS).as_uri() if local else None,
                tags=dict([EXPERIMENT_KIND, (NOTE_TAG, EXPERIMENT_NOTE)]),
            )
            return exp_id
        except Exception:  # another process created it first
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise
    for key, value in (EXPERIMENT_KIND, (NOTE_TAG, EXPERIMENT_NOTE)):
        if exp.tags.get(key) is None:  # an experiment made by older code
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def open_run(experiment: str, required: bool, run_id: str | None = None, run_name: str | None = None) -> NullRun:
    """Start a new run (run_id None) or reopen an existing one; NullRun when tracking is unavailable
    and not required."""
    mlflow = import_mlflow(required)
    if mlflow is None:
        print("warning: mlflow not installed; this run is not tracked", file=sys.stderr)
        return NullRun()
    uri = tracking_uri()
    try:
        check_store(uri)
        mlflow.set_tracking_uri(uri)
        with store_init_lock(uri):
            with_retry(mlflow.MlflowClient, uri)  # builds this process's store: creates or migrates tables
        if run_id and not _run_exists(mlflow, run_id):
            # e.g. metrics/train.json from another clone or store (it is committed): later stages still run
            print(
                f"warning: run {run_id} (the training run) is not in {uri}; this stage is not tracked", file=sys.stderr
            )
            return NullRun()
        if run_id:  # this process holds the run now (tagged before it is RUNNING again: no sweep closes it)
            for key, value in stale_runs.owner_tags().items():
                with_retry(mlflow.MlflowClient().set_tag, run_id, key, value)
            active = with_retry(mlflow.start_run, run_id=run_id)
        else:
            exp_id = with_retry(experiment_id, mlflow, experiment, repo_root())
            # Named after the DVC experiment (`dvc exp run`), else after the commit (`dvc repro`).
            name = run_name or os.environ.get("DVC_EXP_NAME") or f"repro-{git_commit()[:7]}"
            active = with_retry(mlflow.start_run, experiment_id=exp_id, run_name=name, tags=stale_runs.owner_tags())
        # runs of this experiment left RUNNING by killed processes on this machine: ended as KILLED
        with_retry(stale_runs.close_stale_runs, mlflow.MlflowClient(), [active.info.experiment_id])
    except mlflow.exceptions.MlflowException as e:
        if e.error_code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            raise
        raise refused(uri, e.error_code, f"to write runs of experiment {experiment!r}") from None
    except TrackingError:
        if required:
            raise
        print(f"warning: tracking store {uri} unreachable; this run is not tracked", file=sys.stderr)
        return NullRun()
    return Run(mlflow, active.info.run_id)


def _run_exists(mlflow: Any, run_id: str) -> bool:
    try:
        with_retry(mlflow.MlflowClient().get_run, run_id)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def open_training_run(params: Any, mnist: Any, run_id: str | None, fingerprint: dict[str, Any], world: int) -> NullRun:
    """The train stage's run: a new one (with every param and MNIST as its dataset input, name, source and
    sha256 digest), or the run of the checkpoint it resumes; tagged with the machine and the commit."""
    run = open_run(params.tracking.experiment, params.tracking.required, run_id=run_id)
    if not run_id:
        run.log_params(flatten(params))
        run.describe(changed=params_changes(params))
        run.log_dataset(
            "mnist",
            mnist.x_train,
            mnist.y_train,
            source=os.path.abspath(params.paths.mnist),
            digest=mnist.train_digest()[:32],
            context="training",
        )
    run.set_tags(run_tags(fingerprint) | ({"nproc": str(world)} if world > 1 else {}))
    return run


def training_callbacks(run: NullRun, state: Any) -> dict[str, Any]:
    """loop.train's logging callbacks for `run`: loss rows, sample grids, FID during training."""
    return {
        "on_log": lambda step, row: run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step),
        "on_images": lambda step, imgs: run.log_image(image_grid(imgs.numpy()), key="samples", step=step),
        "on_fid": lambda step, value: run.log_metrics(
            {"fid_during_training": value, "fid_seconds": state.fid_history[-1]["seconds"]}, step=step
        ),
    }


def reopen_run(cfg: Any, run_id: str | None) -> NullRun:
    """The train stage's run, for the later stages; NullRun when train ran untracked or its run is not in
    this store."""
    if not run_id:
        return NullRun()
    return open_run(cfg.experiment, cfg.required, run_id=run_id)


def search_runs(experiment: str, uri: str | None = None) -> Any:
    """All runs of `experiment` as a pandas DataFrame (columns params.*, metrics.*, tags.*)."""
    mlflow = import_mlflow(True)
    mlflow.set_tracking_uri(uri or tracking_uri())
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric of one run, in step order."""
    mlflow = import_mlflow(True)
    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def last_image(run_id: str, key: str, dest: Path) -> Path | None:
    """Download the PNG of the highest step logged under `key` with log_image; None if there is none."""
    mlflow = import_mlflow(True)
    client = mlflow.MlflowClient()
    pngs = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    # log_image names files "<key>+step+<step>+timestamp+...png"
    steps = [(int(p.split("+")[2]), p) for p in pngs if p.split("/")[-1].split("+")[0] == key]
    if not steps:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, max(steps)[1], str(dest)))


def download_generator_file(uri: str, dest: Path) -> Path:
    """The generator weights of an MLflow generator model (`models:/mnistgan-generator/latest`, `runs:/ID/generator`,
    ...) from this project's store, downloaded into `dest`.

    Only the weights file is taken, to be loaded with torch's weights-only unpickler by this package's own code:
    the Python file stored beside it (models-from-code) is never run, so a model changed on the server cannot
    run code on the machine that generates from it.
    """
    mlflow = import_mlflow(True)
    mlflow.set_tracking_uri(tracking_uri())
    try:
        with _quiet_mlflow_logs():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as e:  # MlflowException (no such model or version), OSError, ...
        raise InputError(f"--model-uri {uri}: cannot load ({_first_line(e)})") from None
    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        return local / flavor["artifacts"][GENERATOR_ARTIFACT]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise InputError(
            f"--model-uri {uri}: not a generator model of this project (no {GENERATOR_ARTIFACT!r} "
            "artifact in its MLmodel)"
        ) from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ---- scores of a run whose evaluate stage DVC skipped -------------------------------------------------


def log_scores(run: NullRun, scores: dict[str, Any], classifier_metrics: dict[str, Any], eval_path: str) -> None:
    """What the evaluate stage logs: every score (flattened, `generated.fid`, ...), the classifier's
    metrics, the identity of every feature space (tags) and the eval JSON file."""
    flat = flatten(scores) | flatten({"classifier": classifier_metrics})
    for key, value in list(flat.items()):  # an interval [low, high] -> two metrics, <key>_low and <key>_high
        if key.endswith("_ci95") and isinstance(value, list) and len(value) == 2:
            flat |= {f"{key}_low": value[0], f"{key}_high": value[1]}
    run.log_metrics({k: v for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    # where the scores' features came from (network, weights sha256, version): tags, searchable in the UI
    run.set_tags({k: v for k, v in flat.items() if isinstance(v, str)})
    run.log_artifact(eval_path)
    run.describe(scores=scores)  # the run's description and its registered generator's tags
