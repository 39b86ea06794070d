"""mnistgan: reproducible GAN experiments on MNIST.

Reading order (imports point down only: lab -> evaluation -> gan -> base; tests/test_architecture.py holds it):
1. base, this folder: config (params.yaml as frozen dataclasses), errors, io, data, tensors, runtime,
   numerics (each library's code path, the platform fingerprint), pictures; tracking and descriptions
   (MLflow, its only importers besides gan/pyfunc_generator), store (does the server answer and take the
   login); cli.
2. gan/: models, losses, step (GANState, one training step), loop (train), checkpoint, sample,
   generate (`mnistgan generate`). Imports base only: training needs no scoring network.
3. evaluation/: classifier (the yardstick), metrics, suite (all scores + intervals), scoring, monitor,
   score_cli (`mnistgan score`). Imports gan and base.
4. lab/: bench, portability, flops, recipes, calibrate, report, markdown, clone, verify,
   noise, spread, ui, server, postgres, team: tools no stage runs.
The stages (../../stages/*.py) are thin callers of these; `mnistgan --help` lists every command.
"""

__version__ = "0.1.0"
