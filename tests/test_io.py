import numpy as np
import pytest

from mnistgan.io import InputError, atomic_path, load_npy, load_torch, read_json, save_npy, save_torch, write_json


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_until_success(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("garbage")
        raise RuntimeError
    assert read_json(target) == {"a": 1}


def test_round_trips(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_npy(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(load_npy(tmp_path / "a.npy"), arr)
    save_torch(tmp_path / "t.pt", {"x": 1})
    assert load_torch(tmp_path / "t.pt") == {"x": 1}


def test_missing_and_corrupt_files_give_one_line(tmp_path):
    with pytest.raises(InputError, match=r"file not found; rerun the train stage \(dvc repro train\)"):
        load_torch(tmp_path / "nope.pt", made_by="train")
    bad = tmp_path / "bad.pt"
    save_torch(bad, {"weights": np.zeros(3).tolist()})
    bad.write_bytes(bad.read_bytes()[:20])  # truncated
    with pytest.raises(InputError, match="corrupt or unreadable torch file") as e:
        load_torch(bad)
    assert "\n" not in str(e.value)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="corrupt or truncated array file"):
        load_npy(tmp_path / "bad.npy")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not a valid JSON file"):
        read_json(tmp_path / "bad.json")


def test_load_torch_check_rejects_wrong_content(tmp_path):
    save_torch(tmp_path / "x.pt", {"format": "other"})
    with pytest.raises(InputError, match="wrong format"):
        load_torch(tmp_path / "x.pt", check=lambda obj: "wrong format" if obj["format"] != "mine" else None)
