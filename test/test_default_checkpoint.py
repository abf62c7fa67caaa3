"""Golden test: each committed checkpoint (today models/avdp_default) gives pinned actions for a
fixed observation (two rendered sim frames in test/data) and fixed noise.

After retraining on purpose, regenerate the pinned values with
    AVDP_UPDATE_GOLDEN=1 scripts/test.sh test/test_default_checkpoint.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from avdp_ros.data.files import file_sha256
from avdp_ros.model.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
# checkpoint directory under models/ -> its pinned values in test/data
MODELS = {"avdp_default": "golden_default.json"}
# the initial state of held-out eval seed 100000 of the push task (what the PNGs show)
EE_POSE = [0.448931, -3.8e-05, 0.301107, 1.0, 0.000347, 0.0, 0.000204]
INSTRUCTION = "push the red cube onto the green target region"


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    """(checkpoint directory, golden file, loaded policy), one per committed checkpoint."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt = ROOT / "models" / request.param
    yield ckpt, DATA / MODELS[request.param], Policy.from_checkpoint(ckpt)
    torch.set_num_threads(before)


def _obs() -> dict:
    return {"camera": imageio.imread(DATA / "golden_camera.png"), "wrist": imageio.imread(DATA / "golden_wrist.png"),
            "ee_pose": np.array(EE_POSE, np.float32), "gripper": np.float32(0.0), "instruction": INSTRUCTION}


def _noise(policy: Policy) -> dict[str, torch.Tensor]:
    cfg = policy.cfg
    gen = torch.Generator().manual_seed(0)
    return {"video": torch.randn((1, cfg.future_frames, cfg.n_cameras, *cfg.latent_shape), generator=gen),
            "action": torch.randn((1, cfg.horizon, 10), generator=gen)}


def test_default_checkpoint_is_small_and_deterministic_by_default(model):
    ckpt, _, policy = model
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    assert size < 50e6, f"models/{ckpt.name} is {size / 1e6:.1f} MB; keep it well under 50 MB"
    # the best measured policy ships (models/README.md); it samples its actions at temperature 0
    assert policy.kind in ("idm", "baseline") and policy.cfg.relative_actions
    assert policy.cfg.action_temperature == 0.0


def test_default_checkpoint_output_is_pinned(model):
    ckpt, golden_file, policy = model
    policy.reset()
    out = policy.infer(_obs(), noise=_noise(policy), return_frames=True)
    actions = out["actions"]  # (H, 8)
    sha = file_sha256(ckpt / "model.safetensors")
    frames = out.get("predicted_frames")  # only a video policy (idm) predicts frames
    if os.environ.get("AVDP_UPDATE_GOLDEN") == "1":
        golden_file.write_text(json.dumps({"model_sha256": sha, "kind": policy.kind,
                                           "actions": actions.round(6).tolist(),
                                           "frame_mean": None if frames is None else float(frames.mean())},
                                          indent=1))
    golden = json.loads(golden_file.read_text())
    assert golden["model_sha256"] == sha, (f"models/{ckpt.name} changed: if on purpose, regenerate the pinned "
                                           "values (see this file's docstring)")
    np.testing.assert_allclose(actions, np.array(golden["actions"]), atol=2e-4)
    assert golden["kind"] == policy.kind
    if policy.kind == "idm":
        assert frames.shape[:2] == (policy.cfg.future_frames, policy.cfg.n_cameras)
        assert abs(float(frames.mean()) - golden["frame_mean"]) < 0.5
    else:
        assert frames is None
    # and the pinned chunk is a sane one: unit quaternions, starting near the current pose
    np.testing.assert_allclose(np.linalg.norm(actions[:, 3:7], axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(actions[0, :3] - np.array(EE_POSE[:3])) < 0.05
