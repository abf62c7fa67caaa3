"""The policy boundary: a checkpoint in the trainer's format -> Policy.infer on numpy
observations, deterministic with fixed noise, clear errors on bad observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avdp_ros.geometry import axis_angle_to_quat, quat_mul
from avdp_ros.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from avdp_ros.model.config import idm_head, preset
from avdp_ros.model.idm import ActionOnlyPolicy, InverseDynamics, Normalizer
from avdp_ros.model.policy import Policy
from avdp_ros.model.tokenizer import TOKENIZER_PRESETS, Tokenizer, TokenizerConfig
from avdp_ros.model.video import VideoModel


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturb(m: torch.nn.Module, scale=0.05):
    # zero-initialised output layers would make every output identical: give them weights
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("policy")
    tok_cfg = TOKENIZER_PRESETS["tiny"]
    cfg = preset("tiny")
    cfg.tokenizer = tok_cfg.to_dict()
    tok = Tokenizer(tok_cfg)
    video, vnorm = VideoModel(cfg), Normalizer(10)
    idm, base = InverseDynamics(cfg), ActionOnlyPolicy(cfg)
    for m in (video, idm, base):
        _perturb(m)
    # plausible action statistics: around a pose in front of the robot
    for net in (idm, base):
        net.action_norm.fit(torch.randn(256, 10) * 0.05 + torch.tensor([0.5, 0, 0.3, 1, 0, 0, 0, -1, 0, 0.04]))
    save_checkpoint(root / "idm", "idm", {"idm": idm, "tokenizer": tok, "video": video, "video_state_norm": vnorm},
                    cfg.to_dict())
    save_checkpoint(root / "baseline", "baseline", {"baseline": base, "tokenizer": tok}, cfg.to_dict())
    save_checkpoint(root / "video", "video", {"video": video, "tokenizer": tok}, cfg.to_dict())
    return root, cfg


def _obs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "camera": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        "ee_pose": np.concatenate([[0.45, 0.0, 0.3], axis_angle_to_quat(np.array([np.pi, 0, 0]))]),
        "gripper": 0.04,
        "instruction": "push the red cube onto the green target region",
    }


@pytest.mark.parametrize("kind", ["idm", "baseline"])
def test_infer_shapes_determinism_and_noise(checkpoints, kind):
    root, cfg = checkpoints
    policy = Policy.from_checkpoint(root / kind)
    assert policy.kind == kind and policy.obs_hz == cfg.obs_hz
    K, cams, (C, h, w) = cfg.future_frames, len(cfg.cameras), cfg.latent_shape
    g = torch.Generator().manual_seed(1)
    noise = {"video": torch.randn(1, K, cams, C, h, w, generator=g),
             "action": torch.randn(1, cfg.horizon, 10, generator=g)}
    out = policy.infer(_obs(), noise=noise, return_frames=True)
    a = out["actions"]
    assert a.shape == (cfg.horizon, 8) and np.all(np.isfinite(a))
    np.testing.assert_allclose(np.linalg.norm(a[:, 3:7], axis=1), 1.0, atol=1e-5)
    assert {"tokenizer_ms", "video_ms", "idm_ms", "total_ms"} <= set(out["timings"])
    if kind == "idm":
        assert out["predicted_frames"].shape == (K, cams, 16, 16, 3) and out["predicted_frames"].dtype == np.uint8
    else:
        assert "predicted_frames" not in out
    policy.reset()
    again = policy.infer(_obs(), noise=noise)["actions"]
    np.testing.assert_array_equal(again, a)  # same history + same noise -> same chunk
    policy.reset()
    other = policy.infer(_obs(), noise={k: v + 1.0 for k, v in noise.items()})["actions"]
    assert not np.allclose(other, a)


def test_cli_policy_seed_repeats_the_drawn_noise(checkpoints):
    """avdp-eval / avdp-dagger seed the noise a video policy draws: the same command repeats its
    numbers, another seed samples other frames."""
    from argparse import Namespace

    from avdp_ros.tools.eval import load_cli_policy

    root, _ = checkpoints
    a = Namespace(policy=str(root / "idm"), backend="torch", device="cpu", threads=None, video_steps=None,
                  action_steps=None, action_temperature=None)

    def first_two_chunks(seed):
        policy = load_cli_policy(a, seed=seed)
        return [policy.infer(_obs(i))["actions"] for i in range(2)]

    runs = [first_two_chunks(seed) for seed in (7, 7, 8)]
    for x, y in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(runs[0][0], runs[2][0])


def test_action_temperature_scales_the_drawn_noise(checkpoints):
    """Temperature 0 starts the action sampler at zero noise: the same chunk as injecting zeros,
    every time; the default (the config's 1.0) draws fresh noise per call. Injected noise wins."""
    root, cfg = checkpoints
    policy = Policy.from_checkpoint(root / "baseline")
    assert policy.action_temperature == cfg.action_temperature == 1.0
    zeros = policy.infer(_obs(), noise={"action": torch.zeros(1, cfg.horizon, 10)})["actions"]
    policy.action_temperature = 0.0
    for _ in range(2):
        policy.reset()
        np.testing.assert_allclose(policy.infer(_obs())["actions"], zeros, atol=1e-6)
    policy.action_temperature = 1.0
    policy.reset()
    assert not np.allclose(policy.infer(_obs())["actions"], zeros, atol=1e-4)
    policy.action_temperature = 0.0
    policy.reset()
    injected = {"action": torch.ones(1, cfg.horizon, 10)}
    assert not np.allclose(policy.infer(_obs(), noise=injected)["actions"], zeros, atol=1e-4)


def test_history_is_padded_then_rolls(checkpoints):
    root, cfg = checkpoints
    policy = Policy.from_checkpoint(root / "idm")
    policy.observe(_obs(0))
    assert len(policy._frames) == cfg.context_frames  # padded with the first frame
    first = policy._frames[0][0].clone()
    for s in range(1, cfg.context_frames + 1):
        policy.observe(_obs(s))
    assert len(policy._frames) == cfg.context_frames and not torch.equal(policy._frames[0][0], first)


def test_bad_observations_and_checkpoints_are_refused(checkpoints):
    root, _ = checkpoints
    policy = Policy.from_checkpoint(root / "baseline")
    bad = _obs()
    bad["wrist"] = bad["wrist"].astype(np.float32)
    with pytest.raises(ValueError, match="'wrist'.*expected a uint8"):
        policy.infer(bad)
    bad = _obs()
    del bad["camera"]
    with pytest.raises(ValueError, match="'camera': missing"):
        policy.infer(bad)
    bad = _obs()
    bad["ee_pose"][0] = np.nan
    with pytest.raises(ValueError, match="'ee_pose'.*7 finite"):
        policy.infer(bad)
    with pytest.raises(CheckpointError, match="holds a 'video' model; a policy needs one of"):
        Policy.from_checkpoint(root / "video")


@pytest.mark.parametrize("kind", ["idm", "baseline"])
def test_prefix_conditioning_starts_the_chunk_with_the_committed_actions(checkpoints, kind):
    root, cfg = checkpoints
    policy = Policy.from_checkpoint(root / kind)
    assert policy.supports_prefix
    g = torch.Generator().manual_seed(2)
    K, cams, (C, h, w) = cfg.future_frames, len(cfg.cameras), cfg.latent_shape
    noise = {"video": torch.randn(1, K, cams, C, h, w, generator=g),
             "action": torch.randn(1, cfg.horizon, 10, generator=g)}
    free = policy.infer(_obs(), noise=noise)["actions"]
    # committed: the free chunk's first rows moved 2 cm and turned 0.2 rad about z, a plan the
    # model would not have produced itself
    P = cfg.horizon // 2
    prefix = free[:P].copy()
    prefix[:, 0] += 0.02
    prefix[:, 3:7] = np.array([quat_mul(axis_angle_to_quat(np.array([0, 0, 0.2])), q) for q in prefix[:, 3:7]])
    policy.reset()
    out = policy.infer(_obs(), noise=noise, prefix=prefix)["actions"]
    assert out.shape == (cfg.horizon, 8) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:P, :3], prefix[:, :3], atol=1e-5)  # exactly the committed actions
    np.testing.assert_allclose(np.abs(np.sum(out[:P, 3:7] * prefix[:, 3:7], axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:P, 7], prefix[:, 7], atol=1e-5)
    assert not np.allclose(out[P:], free[P:], atol=1e-6)  # the rest is generated given the prefix
    for bad in (free[: cfg.horizon], free[:P, :7], np.full((P, 8), np.nan)):
        with pytest.raises(ValueError, match="prefix"):
            policy.infer(_obs(), noise=noise, prefix=bad)


def test_inpainting_sampler_keeps_known_entries_and_matches_plain_sampling_without_them():
    from avdp_ros.model import flow

    g = torch.Generator().manual_seed(0)
    noise, known = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)

    def v(x, t):
        return torch.sin(x) + x.mean(dim=1, keepdim=True) + t[:, None, None]  # mixes the sequence

    plain = flow.euler_sample(v, noise, 4)
    none = torch.zeros(1, 5, 1, dtype=torch.bool)
    torch.testing.assert_close(flow.euler_sample(v, noise, 4, known, none), plain)
    mask = (torch.arange(5) < 2)[None, :, None]
    out = flow.euler_sample(v, noise, 4, known, mask)
    torch.testing.assert_close(out[:, :2], known[:, :2])
    assert not torch.allclose(out[:, 2:], plain[:, 2:])  # the rest saw the known entries
    with pytest.raises(ValueError, match="both"):
        flow.euler_sample(v, noise, 4, known, None)


def _no_rollout(*args, **kwargs):
    raise AssertionError("the video model was rolled out")


def test_future_sources_noise_oracle_images_and_future_t(checkpoints, tmp_path):
    """What the IDM reads as its future: the rollout, pure noise (no rollout), given frames (the
    oracle; encoded like observations), or for the UWM head the rollout re-noised to future_t
    (1: pure noise and no rollout)."""
    root, cfg = checkpoints
    policy = Policy.from_checkpoint(root / "idm")
    policy.action_temperature = 0.0
    K = cfg.future_frames
    frames = {cam: np.stack([_obs(10 + k)[cam] for k in range(K)]) for cam in cfg.cameras}
    with torch.no_grad():
        want = torch.stack([torch.cat([policy.tokenizer.camera_images(frames[cam][k], cam) for cam in cfg.cameras])
                            for k in range(K)])  # (K, cams, 3, S, S)
        want = policy.tokenizer.encode(want.flatten(0, 1)).unflatten(0, (K, len(cfg.cameras)))[None]
    assert torch.allclose(policy._encode_future(frames), want, atol=1e-5)
    real = policy.video.rollout
    policy.video.rollout = _no_rollout
    oracle = policy.infer(_obs(0), future_images=frames, return_frames=True)
    assert oracle["actions"].shape == (cfg.horizon, 8) and oracle["predicted_frames"].shape[:2] == (K, 2)
    with pytest.raises(ValueError, match=r"future_images\['wrist'\]: expected \(2, H, W, 3\) uint8"):
        policy.infer(_obs(0), future_images={"camera": frames["camera"], "wrist": frames["wrist"][:1]})
    policy.future_source = "noise"
    policy.reset()
    noise = torch.randn(1, K, len(cfg.cameras), *cfg.latent_shape)
    a = policy.infer(_obs(0), noise={"future": noise})["actions"]
    policy.reset()
    assert not np.allclose(a, policy.infer(_obs(0), noise={"future": noise + 1})["actions"])
    policy.video.rollout = real
    # the UWM head
    states, meta = load_checkpoint(root / "idm")
    uwm_cfg = idm_head(cfg, "uwm")
    uwm = InverseDynamics(uwm_cfg)
    _perturb(uwm)
    uwm.action_norm.fit(torch.randn(256, 10) * 0.05 + torch.tensor([0.5, 0, 0.3, 1, 0, 0, 0, -1, 0, 0.04]))
    tok, video, vnorm = Tokenizer(TokenizerConfig.from_dict(cfg.tokenizer)), VideoModel(cfg), Normalizer(10)
    for m, name in ((tok, "tokenizer"), (video, "video"), (vnorm, "video_state_norm")):
        m.load_state_dict(states[name])
    save_checkpoint(tmp_path / "uwm", "idm", {"idm": uwm, "tokenizer": tok, "video": video, "video_state_norm": vnorm},
                    uwm_cfg.to_dict())
    policy = Policy.from_checkpoint(tmp_path / "uwm")
    assert policy.future_t == 0.0 and policy.actor.noised_future
    seen = []
    policy.actor.noise_future = (lambda f: lambda b, t, eps=None: seen.append(float(t)) or f(b, t, eps))(
        policy.actor.noise_future)
    policy.infer(_obs(0))
    policy.future_t = 1.0
    policy.video.rollout = _no_rollout
    policy.infer(_obs(1))
    assert seen == [0.0, 1.0]
