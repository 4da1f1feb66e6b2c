"""The Q-network factory and the bridge to checkpoints: what the learner builds and publishes.

:func:`build_network` makes a fresh network of any kind (``rwkv4`` from :mod:`policies.rwkv`,
``gru`` and ``mlp`` from :mod:`policies.recurrent_baselines`), all behind the
:class:`policies.rwkv.QNetwork` interface; :func:`save_network_checkpoint` writes one in the
project's checkpoint format (weights + metadata, :mod:`policies.checkpoint`) and
:func:`network_from_weights` loads one back into torch (the learner's ``--resume``, ONNX export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.checkpoint import ArchConfig, CheckpointMeta, save_checkpoint
from policies.recurrent_baselines import GruQNetwork, MlpQNetwork
from policies.rwkv import QNetwork, RwkvQNetwork
from sim.observation import ObservationSpec

NETWORKS: dict[str, type[QNetwork]] = {"rwkv4": RwkvQNetwork, "gru": GruQNetwork, "mlp": MlpQNetwork}


def build_network(arch: ArchConfig) -> QNetwork:
    """A freshly initialised Q-network of ``arch.kind``."""
    return NETWORKS[arch.kind](arch)


def numpy_weights(net: QNetwork) -> dict[str, np.ndarray]:
    """The weights as float32 numpy arrays (observation normalisation folded into the input layer),
    ready for ``policies.checkpoint.save_checkpoint`` and the step runtimes."""
    return {name: t.cpu().float().numpy() for name, t in net.folded_state_dict().items()}


def save_network_checkpoint(
    path: str | Path,
    net: QNetwork,
    spec: ObservationSpec | dict[str, Any],
    calibration_identity: str | None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """What the learner calls to publish a network: weights + full metadata (git revision included).

    ``spec`` is the robot's observation contract, or for another gymnasium env the record
    ``{"env_id": ..., "action_bins": [...]}`` (see :meth:`CheckpointMeta.create`).
    """
    meta = CheckpointMeta.create(net.arch, spec, calibration_identity, training=training, metrics=metrics)
    return save_checkpoint(path, numpy_weights(net), meta)


def network_from_weights(arch: ArchConfig, weights: dict[str, np.ndarray]) -> QNetwork:
    """A network with checkpoint weights (numpy arrays by parameter name), strictly matched."""
    net = build_network(arch)
    net.load_state_dict({name: torch.from_numpy(w.copy()) for name, w in weights.items()}, strict=True)
    return net
