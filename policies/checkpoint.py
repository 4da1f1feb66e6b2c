"""Policy checkpoints: one safetensors file, weights plus a JSON metadata record, no torch, no pickle.

A checkpoint is what crosses from the learner (torch) to the daemon (numpy only), so it has to
carry everything the daemon needs to refuse a policy that does not fit: the network architecture,
the observation/action contract it was trained with, and the calibration it was trained against.

File layout: a standard safetensors file whose tensors are the network's ``state_dict`` (float32,
parameter names as in ``policies.rwkv`` / ``policies.recurrent_baselines``) and whose metadata
holds the key ``"robotd"``, a JSON object (:meth:`CheckpointMeta.to_dict`)::

    {"format_version": 1,
     "architecture": {"kind": "rwkv4", "obs_dim": 46, "n_actions": 10, "n_bins": 5,
                      "d": 64, "n_layers": 2, "ffn_hidden": 256, "history": 8},
     "observation": ObservationSpec.to_dict(),
     "action_bins": [-1.0, -0.5, 0.0, 0.5, 1.0],
     "calibration_identity": "...",
     "training": {...}, "git_revision": "...", "metrics": {...}}

and the key ``"robotd_sha256"``, the :func:`content_sha256` of that JSON text and the tensors.
Every load recomputes it and refuses a file that differs (a flipped byte moves the robot as
surely as a bad policy), and refuses any weight that is not finite. A file written before the
hash existed has no ``"robotd_sha256"``: it still loads, checked for finite weights only (the
shipped ``policies/trained/balance.safetensors`` is one; re-saving it would change the identity
its eval report and existing logs name).

Safetensors is read with ``safetensors.numpy``: loading a checkpoint never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from sim.observation import ObservationSpec

CHECKPOINT_SUFFIX = ".safetensors"
FORMAT_VERSION = 1
METADATA_KEY = "robotd"
HASH_KEY = "robotd_sha256"
ARCH_KINDS = ("rwkv4", "gru", "mlp")


class CheckpointError(ValueError):
    """A checkpoint is unreadable, malformed, or does not fit the robot/contract it is used with."""


@dataclass(frozen=True)
class ArchConfig:
    """The network shape: enough to rebuild the torch module or the numpy runtime from weights.

    ``d`` is the width of every kind. ``ffn_hidden`` only matters for ``rwkv4`` (channel-mix
    hidden size, 4*d by default as in the reference); ``history`` only for ``mlp`` (how many of
    the latest observations, current one included, the MLP sees).
    """

    kind: str
    obs_dim: int
    n_actions: int
    n_bins: int
    d: int = 64
    n_layers: int = 2
    ffn_hidden: int = 0
    history: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ARCH_KINDS:
            raise CheckpointError(f"unknown architecture kind {self.kind!r} (known: {', '.join(ARCH_KINDS)})")
        if self.ffn_hidden == 0:
            object.__setattr__(self, "ffn_hidden", 4 * self.d)
        if min(self.obs_dim, self.n_actions, self.n_bins, self.d, self.n_layers, self.history) < 1:
            raise CheckpointError(f"architecture sizes must be positive: {self}")

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Per-sample recurrent state shape (the learner stores one of these per replay sequence).

        rwkv4: (n_layers, 5, d) with rows x_att, aa, bb, pp, x_ffn; gru: (n_layers, d);
        mlp: (history, obs_dim), the last ``history`` observations, oldest first.
        """
        if self.kind == "rwkv4":
            return (self.n_layers, 5, self.d)
        if self.kind == "gru":
            return (self.n_layers, self.d)
        return (self.history, self.obs_dim)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchConfig":
        try:
            return cls(**d)
        except TypeError as e:
            raise CheckpointError(f"bad architecture record {dict(d)!r}: {e}") from None


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything in a checkpoint besides the weights. Build with :meth:`create` when training."""

    architecture: ArchConfig
    observation: dict[str, Any]
    action_bins: list[float]
    calibration_identity: str | None
    training: dict[str, Any] = field(default_factory=dict)
    git_revision: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def create(
        cls,
        architecture: ArchConfig,
        spec: ObservationSpec | Mapping[str, Any],
        calibration_identity: str | None,
        training: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        git_revision: str | None = None,
    ) -> "CheckpointMeta":
        """Metadata for a network trained on ``spec``; the git revision defaults to this checkout's.

        A network trained on another gymnasium env (``robotd train --env``) has no robot
        contract: ``spec`` is then ``{"env_id": ..., "action_bins": [...]}`` and the checkpoint
        runs only there (:attr:`env_id`), never on the robot (:meth:`spec` refuses it).
        """
        if isinstance(spec, ObservationSpec):
            observation, bins = spec.to_dict(), spec.bin_levels()
        else:
            observation, bins = {"env_id": str(spec["env_id"])}, spec["action_bins"]
        return cls(
            architecture=architecture,
            observation=observation,
            action_bins=[float(x) for x in bins],
            calibration_identity=calibration_identity,
            training=dict(training or {}),
            git_revision=git_revision if git_revision is not None else current_git_revision(),
            metrics=dict(metrics or {}),
        )

    @property
    def env_id(self) -> str | None:
        """The gymnasium env a non-robot checkpoint was trained on (None: the robot's contract)."""
        return self.observation.get("env_id")

    @property
    def spec(self) -> ObservationSpec:
        if self.env_id is not None:
            raise CheckpointError(f"checkpoint was trained on gymnasium env {self.env_id!r}, not on the robot")
        try:
            return ObservationSpec.from_dict(self.observation)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint observation contract unusable: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckpointMeta":
        d = dict(d)
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format version {version!r}, this code reads {FORMAT_VERSION}")
        missing = [k for k in ("architecture", "observation", "action_bins", "calibration_identity") if k not in d]
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
        d["architecture"] = ArchConfig.from_dict(d["architecture"])
        try:
            return cls(**d)
        except TypeError as e:
            raise CheckpointError(f"bad checkpoint metadata: {e}") from None


def current_git_revision(root: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the source tree (or ``root``); '+dirty' if a tracked file is
    modified; None outside a git checkout or without git."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def content_sha256(weights: Mapping[str, np.ndarray], record: str) -> str:
    """sha256 (hex) of the metadata JSON text and every tensor's name, dtype, shape and bytes.

    Computed over the content, not the file, so it can live inside the file's own header and
    does not depend on how safetensors lays the tensors out.
    """
    digest = hashlib.sha256(record.encode())
    for name in sorted(weights):
        w = np.ascontiguousarray(weights[name])
        digest.update(f"\0{name}\0{w.dtype.str}\0{w.shape}\0".encode())
        digest.update(w.data)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, weights: Mapping[str, np.ndarray], meta: CheckpointMeta) -> Path:
    """Write weights + metadata + content hash atomically (temp file, then rename: a daemon never
    reads half a file)."""
    path = Path(path)
    tensors = {name: np.ascontiguousarray(w, dtype=np.float32) for name, w in weights.items()}
    record = json.dumps(meta.to_dict())
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: record, HASH_KEY: content_sha256(tensors, record)})
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], CheckpointMeta]:
    """Weights (numpy float32, by parameter name) and metadata, verified; raises CheckpointError
    (one line naming the file) if unusable, corrupted or with a weight that is not finite."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
        weights = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint: {e}") from None
    raw = header.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without robotd metadata (not a policy checkpoint)")
    expected = header.get(HASH_KEY)
    if expected is not None and content_sha256(weights, raw) != expected:
        raise CheckpointError(f"{path}: content hash mismatch (corrupted or edited since it was saved): refused")
    for name in sorted(weights):
        bad = int(np.size(weights[name]) - np.count_nonzero(np.isfinite(weights[name])))
        if bad:
            raise CheckpointError(f"{path}: tensor {name!r} has {bad} non-finite value(s): refused")
    try:
        meta = CheckpointMeta.from_dict(json.loads(raw))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata is not JSON: {e}") from None
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return weights, meta


def check_contract(meta: CheckpointMeta, spec: ObservationSpec, calibration_identity: str | None) -> None:
    """Raise CheckpointError naming every mismatch between a checkpoint and the robot's contract.

    ``calibration_identity=None`` skips the calibration check (simulator or tests); a checkpoint
    without a recorded calibration identity does not pass a check that asks for one.
    """
    problems = [f"observation.{key}: checkpoint {theirs!r}, expected {ours!r}"
                for key, theirs, ours in spec.differences(meta.observation)]
    arch = meta.architecture
    for name, have, want in (
        ("architecture.obs_dim", arch.obs_dim, spec.size),
        ("architecture.n_actions", arch.n_actions, spec.n_actions),
        ("architecture.n_bins", arch.n_bins, spec.n_bins),
    ):
        if have != want:
            problems.append(f"{name}: checkpoint {have}, expected {want}")
    levels = spec.bin_levels()
    if len(meta.action_bins) != len(levels) or not np.allclose(meta.action_bins, levels):
        problems.append(f"action_bins: checkpoint {meta.action_bins}, expected {levels.tolist()}")
    if calibration_identity is not None and meta.calibration_identity != calibration_identity:
        problems.append(
            f"calibration_identity: checkpoint {meta.calibration_identity!r}, robot {calibration_identity!r}"
        )
    if problems:
        raise CheckpointError("checkpoint does not fit: " + "; ".join(problems))
