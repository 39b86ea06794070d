"""classifier (and extractor): a feature network for the scores, trained on MNIST.

`python stages/classifier.py` trains the classifier (params `classifier`); `python stages/classifier.py
extractor` the second feature network (params `extractor`: another architecture and seed).
"""

import sys

from _common import Params, run_stage

from mnistgan.data import load_mnist
from mnistgan.evaluation.classifier import classifier_file, train_classifier
from mnistgan.io import save_torch, write_json

SECTIONS = ("classifier", "extractor")


def main(params: Params, section: str = "classifier") -> None:
    cfg, paths = getattr(params, section), params.paths
    data = load_mnist(paths.mnist)

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        print(f"{section}: epoch {epoch} " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()))

    result = train_classifier(cfg, cfg.seed, data.x_train, data.y_train, data.x_test, data.y_test, on_epoch=on_epoch)
    save_torch(getattr(paths, section), classifier_file(result.model, result.test_accuracy))
    # Only deterministic values here, so two runs of the same params give the same bytes.
    write_json(
        getattr(paths, f"metrics_{section}"),
        {
            "arch": cfg.arch,
            "test_accuracy": round(result.test_accuracy, 6),
            "train_images": result.train_images,
            "epochs": result.epochs,
        },
    )
    print(f"{section}: {cfg.arch} test accuracy {result.test_accuracy:.4%} in {result.seconds:.0f} s")


if __name__ == "__main__":
    section = sys.argv[1] if len(sys.argv) > 1 else "classifier"
    if section not in SECTIONS:
        sys.exit(f"classifier: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
    run_stage(section, lambda params: main(params, section))
