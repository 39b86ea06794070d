"""prepare: real MNIST, checksummed, as four uint8 arrays under paths.mnist."""

from _common import Params, run_stage

from mnistgan.data import load_source, save_mnist


def main(params: Params) -> None:
    cfg = params.prepare
    data = load_source(cfg.source, cfg.idx_dir, download_root="data/raw")
    save_mnist(params.paths.mnist, data)
    print(f"prepare: {len(data.x_train)} train / {len(data.x_test)} test images from {cfg.source}, sha256 verified")


if __name__ == "__main__":
    run_stage("prepare", main)
