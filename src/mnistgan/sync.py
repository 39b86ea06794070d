"""`mnistgan tracking sync`: after `dvc repro`, the training run gets the scores of a skipped evaluate.

Apart from mnistgan.tracking so that the command line stays out of the pipeline stages' dependencies.
"""

from __future__ import annotations

import sys

from mnistgan import stale_runs
from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import load_params
from mnistgan.io import read_json
from mnistgan.tracking import import_mlflow, log_scores, reopen_run, tracking_uri, with_retry


def sync_scores(params_path: str = "params.yaml") -> str:
    """After `dvc repro`: give the run named in metrics/train.json the scores of metrics/eval.json when it
    has none. DVC skips evaluate when its inputs did not change (a fresh clone reproduces the committed
    samples byte for byte), and then the new training run would show losses but no scores."""
    params = load_params(params_path)
    paths = params.paths
    run_id = read_json(paths.metrics_train, made_by="train").get("mlflow_run_id")
    if not run_id:
        return "the last training run was not tracked; nothing to do"
    mlflow = import_mlflow(params.tracking.required)
    if mlflow is None:
        return "mlflow is not installed; nothing to do"
    mlflow.set_tracking_uri(tracking_uri())
    try:
        run = with_retry(mlflow.MlflowClient().get_run, run_id)
    except Exception:  # a run id from another machine's store (metrics/train.json is committed)
        return f"run {run_id} is not in {tracking_uri()}; nothing to do"
    if "generated.fid" in run.data.metrics:
        return f"run {run_id} has its scores"
    scores = read_json(paths.metrics_eval, made_by="evaluate")
    active = reopen_run(params.tracking, run_id)
    log_scores(active, scores, read_json(paths.metrics_classifier, made_by="classifier"), paths.metrics_eval)
    active.set_tags({"scores_from": f"{paths.metrics_eval} (evaluate was skipped: its inputs had not changed)"})
    active.end()
    return f"run {run_id}: scores logged from {paths.metrics_eval}"


def main(argv: list[str] | None = None) -> int:
    """`mnistgan tracking sync`: the step `make repro` runs after `dvc repro`."""
    parser = OneLineParser(prog="mnistgan tracking", description=main.__doc__)
    parser.add_argument(
        "command",
        choices=["sync"],
        help="sync: close runs of killed processes; scores of a skipped evaluate into the run",
    )
    return run_command(parser, lambda _args: sync(), argv)


def sync() -> None:
    experiment = load_params("params.yaml").tracking.experiment
    mlflow = import_mlflow(False)
    if mlflow is not None:
        print(f"tracking: {stale_runs.close_in_experiment(mlflow, tracking_uri(), experiment)}")
    print(f"tracking: {sync_scores()}")


if __name__ == "__main__":
    sys.exit(main())
