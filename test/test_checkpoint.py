"""Checkpoint format: round trip, and each way a file can be wrong ends in a clear error."""

from __future__ import annotations

import json

import pytest
import torch

from avdp_ros.model.checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    net.register_buffer("stats", torch.arange(4.0))
    return net


def test_round_trip_restores_identical_outputs(tmp_path):
    net = _net()
    save_checkpoint(tmp_path / "ck", "idm", {"net": net}, {"n": 3}, extra={"step": 7})
    states, meta = load_checkpoint(tmp_path / "ck", expected_kind="idm")
    assert meta["config"] == {"n": 3} and meta["extra"]["step"] == 7 and meta["kind"] == "idm"
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    other.register_buffer("stats", torch.zeros(4))
    load_into(other, states["net"], "net")
    x = torch.randn(5, 3)
    assert torch.equal(other(x), net(x)) and torch.equal(other.stats, net.stats)


def test_wrong_kind_missing_corrupt_and_mismatched(tmp_path):
    save_checkpoint(tmp_path / "ck", "video", {"net": _net()}, {})
    with pytest.raises(CheckpointError, match="holds a 'video' model, expected 'idm'"):
        load_checkpoint(tmp_path / "ck", expected_kind="idm")
    with pytest.raises(CheckpointError, match="expected checkpoint.json and model.safetensors"):
        load_checkpoint(tmp_path / "nothing")
    weights = tmp_path / "ck" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_checkpoint(tmp_path / "ck")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(tmp_path / "ck", verify=False)
    save_checkpoint(tmp_path / "ck2", "idm", {"net": _net()}, {})
    states, _ = load_checkpoint(tmp_path / "ck2")
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_into(torch.nn.Linear(3, 9), states["net"], "net")
    side = tmp_path / "ck2" / "checkpoint.json"
    meta = json.loads(side.read_text())
    meta["format"] = "pickle"
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expected 'avdp-checkpoint'"):
        load_checkpoint(tmp_path / "ck2")
