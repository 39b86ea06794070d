"""The trained generator as an MLflow Model (models-from-code): the file MLflow stores beside the weights.

The train stage logs it with `tracking.Run.log_generator_model`; anyone then loads it without this repo:

    model = mlflow.pyfunc.load_model("models:/mnistgan-generator/latest")
    images = model.predict(pd.DataFrame({"digit": [7] * 64, "seed": range(64)}))  # uint8 (64, 28, 28)

Input: a DataFrame with int columns `digit` (0-9; -1 = any, the only value an unconditional generator
takes) and `seed`, one image per row; the optional param `truncation` cuts the noise (0 = the full
normal). Output: uint8 (rows, 28, 28), 0 = black. A row's image depends on its (digit, seed) alone, so
the same row gives the same bytes in any request on the CPU, and the same bytes as
`mnistgan generate --digit D --seed S --n 1`.

The package's own source travels with the model (`code_paths`), so loading needs torch, numpy and
pandas but not this repository. This is the one module besides `tracking` that imports mlflow: MLflow
reads it at logging and loading time; the pipeline never imports it.
"""

from __future__ import annotations

from typing import Any

import mlflow
import torch

from mnistgan.descriptions import GENERATOR_ARTIFACT
from mnistgan.gan.sample import check_generator_file, digits_from_seeds, generator_from_file
from mnistgan.io import load_torch


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        gen_file = load_torch(context.artifacts[GENERATOR_ARTIFACT], check=check_generator_file)
        self.g, self.cfg = generator_from_file(gen_file)  # eval mode, on the CPU

    # No type hints here: MLflow reads predict's hints as a schema and warns on these; the signature logged
    # with the model (descriptions.generator_signature) is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        truncation = float((params or {}).get("truncation", 0.0))
        if truncation < 0:
            raise ValueError(f"truncation {truncation} is negative; 0 (off) or a cut > 0 such as 2.0")
        with torch.no_grad():
            return digits_from_seeds(
                self.g,
                self.cfg.z_dim,
                self.cfg.conditional,
                model_input["digit"].to_numpy(),
                model_input["seed"].to_numpy(),
                truncation,
            )


mlflow.models.set_model(GeneratorModel())
