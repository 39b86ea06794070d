"""The model registry: dvc.yaml's `mnistgan-generator` artifact, versioned by GTO git tags, pushed to a DVC
remote and fetched back with `dvc artifacts get` from another folder, byte for byte."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from pipeline_utils import BIN, dvc, run
from test_determinism import copy_reproduced

pytestmark = pytest.mark.slow

ARTIFACT = "mnistgan-generator"
GENERATOR = "models/generator.pt"


def test_registered_generator_is_fetched_from_the_remote_byte_for_byte(tmp_path, tmp_path_factory):
    root, hashes = copy_reproduced(tmp_path_factory, tmp_path / "repo")
    expected = (root / GENERATOR).read_bytes()
    assert hashlib.sha256(expected).hexdigest() == hashes[GENERATOR]  # the shared run's generator

    # Register a version: the remote's config and dvc.lock (which names the generator's hash) committed,
    # the generator pushed, a GTO tag on that commit.
    remote = tmp_path / "dvc-remote"
    dvc(["remote", "add", "-d", "storage", str(remote)], root)
    run(["git", "add", "dvc.lock", ".dvc/config"], root)
    run(["git", "commit", "-q", "-m", "pipeline results and remote"], root)
    dvc(["push", GENERATOR], root)
    run([str(BIN / "gto"), "register", ARTIFACT], root)
    assert run(["git", "tag", "--list"], root).stdout.split() == [f"{ARTIFACT}@v0.0.1"]

    # Nothing left in the copy but git: no DVC cache, no generator in the workspace; only the remote has it.
    shutil.rmtree(root / ".dvc/cache")
    (root / GENERATOR).unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    offline = {"DVC_STUDIO_OFFLINE": "1"}  # straight to the DVC remote: no attempt to reach DVC Studio
    for name, rev in (("latest.pt", []), ("pinned.pt", ["--rev", "v0.0.1"])):
        shutil.rmtree(root / ".dvc/cache", ignore_errors=True)  # the first fetch filled it again
        dvc(["artifacts", "get", str(root), ARTIFACT, *rev, "-o", name], elsewhere, extra_env=offline)
        assert (elsewhere / name).read_bytes() == expected, name

    # An unknown version is an error, not a silent fetch of the latest one.
    missing = dvc(
        ["artifacts", "get", str(root), ARTIFACT, "--rev", "v9.9.9", "-o", "no.pt"],
        elsewhere,
        check=False,
        extra_env=offline,
    )
    assert missing.returncode != 0
    assert not (elsewhere / "no.pt").exists()
