"""Tokenizer, latent cache and training windows (tiny preset, synthetic dataset, CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avdp_ros.data.convert import FORMAT, FORMAT_VERSION
from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.data.latents import LatentDataset, build_vocabulary, cache_latents
from avdp_ros.model.config import UNK
from avdp_ros.model.rotation import quat_to_rot6d
from avdp_ros.model.tokenizer import (
    TOKENIZER_PRESETS,
    Tokenizer,
    TokenizerConfig,
    calibrate_latent_scale,
    to_float_images,
)

INSTRUCTIONS = ("push the red cube", "pick the red cube")


def write_synthetic_dataset(root: Path, n_labelled: int = 3, n_free: int = 1, T: int = 8, size: int = 32,
                            action_ratio: int = 2, seed: int = 0) -> Path:
    """A dataset in avdp-convert's format: a bright square that moves with the end effector.

    Episode i moves the square right (x grows) from a seeded start; the wrist view is the mirrored
    image. The first `n_labelled` episodes have `action.npy` (the next pose, at action_ratio rows
    per step, row k*r + j = pose of step k + 1 plus j mm), the rest are action-free.
    """
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n_labelled + n_free):
        name = f"ep{i:02d}"
        d = root / "episodes" / name
        d.mkdir(parents=True)
        start = rng.integers(0, size // 2)
        x = (start + 2 * np.arange(T)).clip(0, size - 6)  # (T,) square column per step
        img = np.full((T, size, size, 3), 20, np.uint8)
        for t in range(T):
            img[t, 10:16, x[t]:x[t] + 6] = (230, 40, 40)
        ee = np.zeros((T, 7), np.float32)
        ee[:, 0] = x / 100.0
        ee[:, 2] = 0.3
        ee[:, 6] = 1.0  # identity quaternion (x, y, z, w)
        grip = np.linspace(0.08, 0.0, T).astype(np.float32)
        np.save(d / "camera.npy", img)
        np.save(d / "wrist.npy", img[:, :, ::-1].copy())
        np.save(d / "ee_pose.npy", ee)
        np.save(d / "gripper.npy", grip)
        np.save(d / "stamps.npy", (np.arange(T) * 100_000_000).astype(np.int64))
        has_actions = i < n_labelled
        if has_actions:
            nxt = np.concatenate([ee[1:], ee[-1:]])  # (T, 7)
            act = np.repeat(np.concatenate([nxt, grip[:, None]], 1), action_ratio, axis=0)  # (T*r, 8)
            act[:, 1] = np.tile(np.arange(action_ratio) / 1000.0, T)  # marks the row within a step
            np.save(d / "action.npy", act.astype(np.float32))
        entry = {"name": name, "source_bag": name, "length": T, "has_actions": has_actions,
                 "instruction": INSTRUCTIONS[i % 2], "task": "synthetic", "seed": i, "success": True,
                 "truncated": False, "files": {}}
        (d / "meta.json").write_text(json.dumps(entry))
        episodes.append(entry)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "obs_hz": 10.0,
                "action_hz": 10.0 * action_ratio, "action_ratio": action_ratio, "image_size": [size, size],
                "cameras": {"camera": "/camera/image", "wrist": "/wrist/image"}, "topics": {}, "config": {},
                "episodes": episodes, "failed": []}
    (root / "manifest.json").write_text(json.dumps(manifest))
    EpisodeDataset(root)  # the reader accepts it
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is much faster than oversubscribing shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path / "ds")


@pytest.fixture()
def tok() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(TOKENIZER_PRESETS["tiny"]).eval()


def test_presets_and_config_validation():
    assert TOKENIZER_PRESETS["base"].image_size == 64
    assert TOKENIZER_PRESETS["base"].latent_shape == (4, 8, 8)  # 8x downsampling
    assert TOKENIZER_PRESETS["tiny"].latent_shape == (4, 4, 4)
    cfg = TokenizerConfig.from_dict(json.loads(json.dumps(TOKENIZER_PRESETS["base"].to_dict())))
    assert cfg == TOKENIZER_PRESETS["base"]
    with pytest.raises(ValueError, match="norm_num_groups"):
        TokenizerConfig(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="recon_loss"):
        TokenizerConfig(recon_loss="l3")


def test_crops_validate_round_trip_and_leave_old_configs_alone():
    base = TOKENIZER_PRESETS["base"]
    assert "crops" not in base.to_dict()  # no crops: the config (and so the fingerprint) is as before crops
    cropped = dataclasses.replace(base, crops={"camera": [0.4, 0.2, 0.5, 0.5]})
    d = json.loads(json.dumps(cropped.to_dict()))
    assert d["crops"] == {"camera": [0.4, 0.2, 0.5, 0.5]}
    assert TokenizerConfig.from_dict(d) == cropped and cropped.crops["camera"] == (0.4, 0.2, 0.5, 0.5)
    for bad, match in (([0.6, 0.0, 0.5, 0.5], "inside the frame"), ([0.0, 0.0, 0.0, 1.0], "inside the frame"),
                       ([0.1, 0.1, 0.5], "expected 4 numbers"), ("top", "expected 4 numbers")):
        with pytest.raises(ValueError, match=rf"crops\['wrist'\].*{match}"):
            TokenizerConfig(crops={"wrist": bad})


def test_crop_cuts_the_same_pixels_in_every_path(dataset: Path):
    from avdp_ros.deploy import npops
    from avdp_ros.images import crop_box

    assert crop_box(128, 128, (0.40625, 0.203125, 0.5, 0.5)) == (52, 116, 26, 90)
    assert crop_box(10, 10, (0.0, 0.0, 0.01, 0.01)) == (0, 1, 0, 1)  # never empty
    img = np.random.default_rng(0).integers(0, 256, (2, 40, 30, 3), dtype=np.uint8)
    box = (0.25, 0.1, 0.5, 0.8)  # rows 10:30, columns 3:27
    want = to_float_images(img[:, 10:30, 3:27], 16)
    torch.testing.assert_close(to_float_images(img, 16, box), want, rtol=0, atol=0)
    np.testing.assert_allclose(npops.images_to_float(img, 16, box), want.numpy(), atol=1e-6)
    # the tokenizer crops only the cameras it names, in the cache as at inference
    tok = Tokenizer(dataclasses.replace(TOKENIZER_PRESETS["tiny"], crops={"camera": box})).eval()
    out = cache_latents(dataset, tok, progress=False)
    frames = {cam: np.load(dataset / "episodes" / "ep00" / f"{cam}.npy") for cam in ("camera", "wrist")}
    with torch.no_grad():
        cam_ref = tok.encode(to_float_images(frames["camera"], 16, box)).numpy()
        wrist_ref = tok.encode(frames["wrist"]).numpy()
        uncropped = tok.encode(frames["camera"]).numpy()
    np.testing.assert_allclose(np.load(out / "ep00" / "camera.npy"), cam_ref, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(np.load(out / "ep00" / "wrist.npy"), wrist_ref, atol=2e-3, rtol=2e-3)
    assert np.abs(cam_ref - uncropped).max() > 0.05  # the crop changed what was encoded


def test_encode_decode_shapes_and_dtypes(tok: Tokenizer):
    u8 = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    z_u8 = tok.encode(u8)
    assert z_u8.shape == (3, 4, 4, 4) and z_u8.dtype == torch.float32
    as_float = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0  # same images, float CHW
    torch.testing.assert_close(tok.encode(as_float), z_u8)
    img = tok.decode(z_u8)
    assert img.shape == (3, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    with pytest.raises(ValueError, match="expected"):
        tok.encode(torch.zeros(2, 32, 32, 3))  # float HWC is ambiguous: refused
    loss, logs = tok.loss(as_float)
    assert loss.ndim == 0 and {"recon", "kl"} <= logs.keys()


def test_latent_scale_is_applied_once(tok: Tokenizer):
    images = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        raw = tok.encode(images)  # latent_scale is 1.0 before calibration
        scale = calibrate_latent_scale(tok, [images[:4], images[4:]])
        assert tok.config.latent_scale == scale
        assert scale == pytest.approx(1.0 / raw.double().std(unbiased=False).item(), rel=1e-4)
        scaled = tok.encode(images)
        torch.testing.assert_close(scaled, raw * scale)
        assert scaled.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)
        torch.testing.assert_close(tok.decode(scaled), tok.decode(raw * scale))  # decode undoes it


def test_checkpoint_round_trip(tok: Tokenizer, tmp_path: Path):
    tok.config.latent_scale = 0.7
    images = torch.rand(2, 3, 16, 16)
    path = tok.save(tmp_path / "tok")
    again = Tokenizer.from_checkpoint(path)
    assert again.config == tok.config and again.fingerprint() == tok.fingerprint()
    with torch.no_grad():
        torch.testing.assert_close(again.encode(images), tok.encode(images), rtol=0, atol=0)
        z = tok.encode(images)
        torch.testing.assert_close(again.decode(z), tok.decode(z), rtol=0, atol=0)


def test_cache_written_once_and_reused(dataset: Path, tok: Tokenizer, monkeypatch):
    calls = []
    encode = tok.encode
    monkeypatch.setattr(tok, "encode", lambda x: calls.append(len(x)) or encode(x))
    out = cache_latents(dataset, tok, progress=False)
    assert out.parent == dataset / "latents" and out.name == tok.fingerprint()[:16]
    assert sum(calls) == 4 * 8 * 2  # every frame of both cameras, once
    m = json.loads((out / "manifest.json").read_text())
    assert m["tokenizer_hash"] == tok.fingerprint() and m["latent_shape"] == [4, 4, 4]
    lat = np.load(out / "ep00" / "camera.npy")
    assert lat.shape == (8, 4, 4, 4) and lat.dtype == np.float16
    with torch.no_grad():
        ref = tok.encode(np.load(dataset / "episodes" / "ep00" / "camera.npy")).numpy()
    np.testing.assert_allclose(lat, ref, atol=2e-3, rtol=2e-3)
    calls.clear()
    assert cache_latents(dataset, tok, progress=False) == out
    assert calls == []  # second call encodes nothing
    (out / "ep01" / "wrist.npy").unlink()  # an interrupted cache resumes with what is missing
    cache_latents(dataset, tok, progress=False)
    assert sum(calls) == 8


def test_augmented_views_are_seeded_cached_once_and_served_per_view(dataset: Path, tok: Tokenizer, monkeypatch):
    from avdp_ros.data.latents import cache_views
    from avdp_ros.train.augment import AUGMENT_PRESETS, AugmentConfig

    aug = AUGMENT_PRESETS["default"]
    cache = cache_latents(dataset, tok, progress=False)
    views = cache_views(dataset, tok, cache, aug, views=3, seed=5, progress=False)
    assert views.parent == cache / "views"
    lat = np.load(views / "ep00" / "camera.npy")
    assert lat.shape == (2, 8, 4, 4, 4) and lat.dtype == np.float16
    clean = np.load(cache / "ep00" / "camera.npy")
    assert np.abs(lat.astype(np.float32) - clean).max() > 0.01 and np.abs(lat[0] - lat[1]).max() > 0.01
    # reproducible by seed: recomputed from scratch it is the same; another seed is another cache
    (views / "ep00" / "camera.npy").unlink()
    calls = []
    encode = tok.encode
    monkeypatch.setattr(tok, "encode", lambda x: calls.append(len(x)) or encode(x))
    cache_views(dataset, tok, cache, aug, views=3, seed=5, progress=False)
    assert sum(calls) == 2 * 8 * 2  # only the missing episode, both views and cameras
    np.testing.assert_array_equal(np.load(views / "ep00" / "camera.npy"), lat)
    assert cache_views(dataset, tok, cache, aug, views=3, seed=6, progress=False) != views
    with pytest.raises(ValueError, match="views >= 2"):
        cache_views(dataset, tok, cache, AugmentConfig(), views=3)
    # every window once per view, view 0 the clean latents; the same labels in every view
    vocab = build_vocabulary([dataset])
    plain = LatentDataset([(dataset, cache)], context_frames=1, future_frames=1, horizon=4, vocab=vocab)
    ds = LatentDataset([(dataset, cache, views)], context_frames=1, future_frames=1, horizon=4, vocab=vocab)
    assert ds.views == 3 and len(ds) == 3 * len(plain)
    by_key = {k: i for i, k in enumerate(ds.index)}
    a, b = ds[by_key[(0, 2, 0)]], ds[by_key[(0, 2, 1)]]
    torch.testing.assert_close(a["context"], plain[plain.index.index((0, 2, 0))]["context"])
    torch.testing.assert_close(b["context"][0, 0], torch.from_numpy(lat[0, 2].astype(np.float32)))
    torch.testing.assert_close(a["actions"], b["actions"])
    chunks, _ = ds.action_chunks()
    assert len(chunks) == len(plain.action_chunks()[0])  # normaliser statistics do not count views twice
    with pytest.raises(ValueError, match="some caches come with augmented views and some without"):
        LatentDataset([(dataset, cache, views), (dataset, cache)], context_frames=1, future_frames=1, horizon=4,
                      vocab=vocab)


def test_windows_padding_and_actions(dataset: Path, tok: Tokenizer):
    cache = cache_latents(dataset, tok, progress=False)
    vocab = build_vocabulary([dataset])
    assert vocab == [UNK, *sorted(INSTRUCTIONS)]
    ds = LatentDataset([(dataset, cache)], context_frames=3, future_frames=2, horizon=4, vocab=vocab)
    assert len(ds) == 4 * 7  # t = 0 .. T-2 per episode
    lat = np.stack([np.load(cache / "ep00" / f"{c}.npy") for c in ("camera", "wrist")], 1).astype(np.float32)
    first = ds[0]  # episode ep00, t = 0: two padded context frames repeat frame 0
    assert first["context"].shape == (3, 2, 4, 4, 4) and first["future"].shape == (2, 2, 4, 4, 4)
    for j in range(3):
        np.testing.assert_array_equal(first["context"][j].numpy(), lat[0])
    np.testing.assert_array_equal(first["future"][0].numpy(), lat[1])
    assert first["states"].shape == (5, 10) and first["state"].shape == (10,)
    ee = np.load(dataset / "episodes" / "ep00" / "ee_pose.npy")
    np.testing.assert_allclose(first["state"][:3].numpy(), ee[0, :3])
    np.testing.assert_allclose(first["state"][3:9].numpy(), quat_to_rot6d(torch.tensor([0, 0, 0, 1.0])).numpy())
    act = np.load(dataset / "episodes" / "ep00" / "action.npy")
    assert first["actions"].shape == (4, 10)
    np.testing.assert_allclose(first["actions"][:, :3].numpy(), act[0:8:2, :3])  # every r-th row
    assert bool(first["has_actions"]) and first["instr"].item() == vocab.index(INSTRUCTIONS[0])
    last = ds[6]  # ep00, t = 6 = T-2: second future frame and actions past the end repeat the last
    np.testing.assert_array_equal(last["future"][1].numpy(), lat[7])
    np.testing.assert_allclose(last["actions"][2:, :3].numpy(), np.repeat(act[14:15, :3], 2, 0))
    free = ds[3 * 7]  # ep03 is action-free
    assert not bool(free["has_actions"]) and free["actions"].abs().sum() == 0
    only = LatentDataset([(dataset, cache)], 3, 2, 4, vocab, require_actions=True)
    chunks, starts = only.action_chunks()  # one chunk per window, with the state it starts from
    assert len(only.refs) == 3 and chunks.shape == (3 * 7, 4, 10) and starts.shape == (3 * 7, 10)
    np.testing.assert_array_equal(chunks[0], first["actions"].numpy())
    np.testing.assert_array_equal(starts[0], first["state"].numpy())
    some = LatentDataset([(dataset, cache)], 3, 2, 4, vocab, episodes=["ds/ep01"])
    assert [r.name for r in some.refs] == ["ep01"]
