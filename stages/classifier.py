"""classifier: the CNN whose softmax and features are the yardstick for every score."""

from _common import Params, run_stage

from mnistgan.classifier import classifier_file, train_classifier
from mnistgan.data import load_mnist
from mnistgan.io import save_torch, write_json


def main(params: Params) -> None:
    data = load_mnist(params.paths.mnist)

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        print(f"classifier: epoch {epoch} " + " ".join(f"{k} {v:.4f}" for k, v in stats.items()))

    result = train_classifier(params.classifier, params.classifier.seed, data.x_train, data.y_train, data.x_test,
                              data.y_test, on_epoch=on_epoch)  # fmt: skip
    save_torch(params.paths.classifier, classifier_file(result.model, result.test_accuracy))
    # Only deterministic values here, so two runs of the same params give the same bytes.
    write_json(params.paths.metrics_classifier,
               {"test_accuracy": round(result.test_accuracy, 6), "train_images": result.train_images,
                "epochs": result.epochs})  # fmt: skip
    print(f"classifier: test accuracy {result.test_accuracy:.4%} in {result.seconds:.0f} s")


if __name__ == "__main__":
    run_stage("classifier", main)
