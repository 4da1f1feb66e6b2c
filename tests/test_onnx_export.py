"""ONNX export of the step function, run under onnxruntime against torch forward_step."""

import json

import numpy as np
import pytest
import torch

from policies.checkpoint import ArchConfig
from policies.onnx_export import export_onnx
from robotd.commands.export import main
from policies.networks import build_network, save_network_checkpoint
from policies.rwkv import randomize_parameters
from sim.observation import ObservationSpec

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
SPEC = ObservationSpec()


@pytest.mark.parametrize("kind", ["rwkv4", "gru", "mlp"])
@torch.no_grad()
def test_onnx_step_matches_torch(tmp_path, kind):
    arch = ArchConfig(kind, SPEC.size, SPEC.n_actions, SPEC.n_bins, history=4)
    net = randomize_parameters(build_network(arch), seed=2).eval()
    ckpt = save_network_checkpoint(tmp_path / "p.safetensors", net, SPEC, "cal-test")
    model_path = export_onnx(ckpt, tmp_path / "p.onnx")

    props = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    assert json.loads(props["robotd"])["architecture"]["kind"] == kind
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    state = net.initial_state(3).numpy()  # batch 3: the batch axis is dynamic (exported with 1)
    state_t = torch.from_numpy(state)
    for _ in range(5):
        obs = rng.standard_normal((3, SPEC.size)).astype(np.float32)
        q, state = session.run(["q", "next_state"], {"obs": obs, "state": state})
        q_t, state_t = net.forward_step(torch.from_numpy(obs), state_t)
        np.testing.assert_allclose(q, q_t.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(state, state_t.numpy(), rtol=1e-4, atol=1e-4)


def test_cli_export_defaults_next_to_the_checkpoint(tmp_path, capsys):
    arch = ArchConfig("mlp", SPEC.size, SPEC.n_actions, SPEC.n_bins, history=2)
    ckpt = save_network_checkpoint(tmp_path / "m.safetensors", build_network(arch), SPEC, None)
    assert main([str(ckpt), "--onnx"]) == 0
    assert (tmp_path / "m.onnx").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert main([str(tmp_path / "junk.safetensors"), "--onnx", str(tmp_path / "j.onnx")]) == 2
    assert "not a readable safetensors checkpoint" in capsys.readouterr().err
