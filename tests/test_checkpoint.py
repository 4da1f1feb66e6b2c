"""Checkpoint format: safetensors + JSON metadata round trip, contract checks that name mismatches."""

import json
import struct
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import save_file

from policies.checkpoint import (
    CHECKPOINT_SUFFIX,
    ArchConfig,
    CheckpointError,
    CheckpointMeta,
    check_contract,
    load_checkpoint,
    save_checkpoint,
)
from sim.observation import ObservationSpec

SPEC = ObservationSpec()
ARCH = ArchConfig("rwkv4", SPEC.size, SPEC.n_actions, SPEC.n_bins)


def meta(**changes) -> CheckpointMeta:
    base = CheckpointMeta.create(ARCH, SPEC, "cal-abc", training={"lr": 3e-4}, metrics={"return": 1.5},
                                 git_revision="deadbeef")
    return replace(base, **changes)


def test_round_trip_weights_and_metadata(tmp_path):
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, dtype=np.float64)}
    path = save_checkpoint(tmp_path / f"p{CHECKPOINT_SUFFIX}", weights, meta())
    loaded, m = load_checkpoint(path)
    assert set(loaded) == set(weights)
    np.testing.assert_array_equal(loaded["a.weight"], weights["a.weight"])
    assert loaded["b"].dtype == np.float32
    assert m == meta()
    assert m.architecture.ffn_hidden == 4 * m.architecture.d
    assert m.action_bins == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert m.spec == SPEC
    assert not (tmp_path / f"p{CHECKPOINT_SUFFIX}.tmp").exists()


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    path = save_checkpoint(tmp_path / "p.safetensors", {"w": np.zeros(3, np.float32)}, meta())
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    record = json.loads(header["__metadata__"]["robotd"])
    assert record["format_version"] == 1
    assert record["architecture"]["kind"] == "rwkv4"
    assert record["observation"] == SPEC.to_dict()
    assert record["calibration_identity"] == "cal-abc" and record["git_revision"] == "deadbeef"


def _git(cwd, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_git_revision_defaults_to_this_checkout():
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a git checkout of robotd (the case without git is tested below)")
    rev = CheckpointMeta.create(ARCH, SPEC, None).git_revision
    assert rev is not None and rev.split("+")[0] == _git(root, "rev-parse", "HEAD")


def test_git_revision_of_a_repository_clean_dirty_absent(tmp_path, monkeypatch):
    import shutil

    from policies.checkpoint import current_git_revision

    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f.txt").write_text("a\n")
    _git(repo, "add", "f.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert current_git_revision(repo) == head
    (repo / "f.txt").write_text("b\n")
    assert current_git_revision(repo) == head + "+dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above it either
    assert current_git_revision(outside) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git not installed
    assert current_git_revision(repo) is None


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"not a checkpoint"), "not a readable safetensors"),
        (lambda p: save_file({"w": np.zeros(1, np.float32)}, str(p)), "without robotd metadata"),
        (lambda p: save_file({"w": np.zeros(1, np.float32)}, str(p), metadata={"robotd": "{"}), "not JSON"),
        (lambda p: save_file({"w": np.zeros(1, np.float32)}, str(p),
                             metadata={"robotd": json.dumps({**meta().to_dict(), "format_version": 99})}),
         "format version 99"),
        (lambda p: save_file({"w": np.zeros(1, np.float32)}, str(p),
                             metadata={"robotd": json.dumps({"format_version": 1})}), "lacks architecture"),
    ],
)
def test_unusable_files_raise_checkpoint_error(tmp_path, write, message):
    path = tmp_path / "bad.safetensors"
    write(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_unknown_architecture_kind():
    with pytest.raises(CheckpointError, match="unknown architecture kind 'lstm'"):
        ArchConfig("lstm", 1, 1, 2)


def test_contract_accepts_a_matching_checkpoint():
    check_contract(meta(), SPEC, "cal-abc")
    check_contract(meta(), SPEC, None)  # calibration check skipped on request


def test_a_version_1_checkpoint_fits_as_no_stance_and_a_stance_must_match():
    version_1 = {k: v for k, v in SPEC.to_dict().items() if k != "stance_rad"} | {"version": 1}
    old = meta(observation=version_1)
    check_contract(old, SPEC, "cal-abc")  # the checkpoints trained before the stance existed still load
    assert old.spec == SPEC
    with pytest.raises(CheckpointError, match="observation.stance_rad: checkpoint"):
        check_contract(old, ObservationSpec(stance_rad=(0.1,) * SPEC.n_actions), "cal-abc")


@pytest.mark.parametrize(
    "spec, calibration, expected",
    [
        (ObservationSpec(action_history=3), "cal-abc", ["observation.action_history: checkpoint 4, expected 3",
                                                        "architecture.obs_dim: checkpoint 46, expected 36"]),
        (ObservationSpec(n_bins=3), "cal-abc", ["observation.n_bins", "architecture.n_bins", "action_bins"]),
        (ObservationSpec(action_scale_rad=0.3), "cal-abc", ["observation.action_scale_rad: checkpoint 0.4"]),
        (SPEC, "cal-other", ["calibration_identity: checkpoint 'cal-abc', robot 'cal-other'"]),
    ],
)
def test_contract_mismatch_names_every_difference(spec, calibration, expected):
    with pytest.raises(CheckpointError) as err:
        check_contract(meta(), spec, calibration)
    for text in expected:
        assert text in str(err.value)


def test_checkpoint_without_calibration_identity_fails_a_calibrated_check():
    with pytest.raises(CheckpointError, match="calibration_identity: checkpoint None"):
        check_contract(meta(calibration_identity=None), SPEC, "cal-abc")


def _overwrite_data_bytes(path, offset: int, n: int = 4) -> None:
    """Overwrite ``n`` bytes ``offset`` bytes into the tensor data with 0xFF (a float32 NaN)."""
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    start = 8 + header_len + offset
    raw[start:start + n] = b"\xff" * n
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_saved_checkpoint_is_refused_by_its_content_hash(tmp_path):
    path = save_checkpoint(tmp_path / "p.safetensors", {"w": np.arange(8, dtype=np.float32)}, meta())
    header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert len(header["__metadata__"]["robotd_sha256"]) == 64
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # a finite weight, changed: only the hash sees it
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path}: content hash mismatch (corrupted or edited since it was saved): refused"


def test_an_edited_metadata_record_is_refused_by_the_content_hash(tmp_path):
    path = save_checkpoint(tmp_path / "p.safetensors", {"w": np.zeros(3, np.float32)}, meta())
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'\\"cal-abc\\"', b'\\"cal-xyz\\"'))
    assert path.read_bytes() != raw
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(path)


def test_a_checkpoint_without_a_hash_loads_if_finite_and_is_refused_with_a_nan(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"w": np.arange(4, dtype=np.float32)}, str(path), metadata={"robotd": json.dumps(meta().to_dict())})
    weights, m = load_checkpoint(path)  # written before content hashes: still loads
    assert m == meta() and weights["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    _overwrite_data_bytes(path, 8)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path}: tensor 'w' has 1 non-finite value(s): refused"


def test_a_saved_checkpoint_with_a_non_finite_weight_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "p.safetensors", {"a": np.ones(2, np.float32), "b": np.array([1, np.inf])},
                           meta())
    with pytest.raises(CheckpointError, match=r"tensor 'b' has 1 non-finite value\(s\): refused"):
        load_checkpoint(path)
