"""End to end on a synthetic dataset: tokenizer -> latent cache -> video -> IDM / baseline via the
CLI entry functions (tiny preset, CPU), plus the loop utilities."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_tokenizer import write_synthetic_dataset

from avdp_ros.data.latents import list_episodes
from avdp_ros.model.checkpoint import load_checkpoint
from avdp_ros.model.tokenizer import Tokenizer
from avdp_ros.tools.train import main_baseline, main_idm, main_tokenizer, main_video
from avdp_ros.train import data as train_data
from avdp_ros.train import engine as tu
from avdp_ros.train import metrics
from avdp_ros.train.data import ImageSet, WithFeatures, camera_indices, early_window_indices, video_feature_table

COMMON = ["--preset", "tiny", "--device", "cpu", "--threads", "1", "--seed", "0", "--val-fraction", "0.3",
          "--log-every", "5", "--no-progress"]


def history(run: Path) -> list[dict]:
    return json.loads((run / tu.HISTORY_FILE).read_text())


def early_late(run: Path, key: str = "loss") -> tuple[float, float]:
    losses = [h[key] for h in history(run) if key in h]
    return sum(losses[:2]) / 2, sum(losses[-2:]) / 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Train everything once for the module (a few steps each)."""
    before = torch.get_num_threads()
    base = tmp_path_factory.mktemp("train")
    data = [str(write_synthetic_dataset(base / "push", n_labelled=4, n_free=2, T=10, seed=1)),
            str(write_synthetic_dataset(base / "pick", n_labelled=3, n_free=0, T=10, seed=2))]
    manifest = Path(data[1]) / "manifest.json"  # two failed demonstrations: video data, not action data
    m = json.loads(manifest.read_text())
    for e in m["episodes"][1:]:
        e["success"] = False
    manifest.write_text(json.dumps(m))
    r: dict = {name: base / name for name in ("tok", "video", "idm", "baseline")}
    r["failed"] = {f"pick/{e['name']}" for e in m["episodes"][1:]}
    assert main_tokenizer(["--data", *data, "--out", str(r["tok"]), "--steps", "30", "--batch-size", "16",
                           "--lr", "3e-3", "--val-every", "15", "--ckpt-every", "15", *COMMON]) == 0
    tok_ckpt = str(r["tok"] / tu.LATEST)
    assert main_video(["--data", *data, "--out", str(r["video"]), "--tokenizer", tok_ckpt, "--steps", "30",
                       "--batch-size", "16", "--lr", "2e-3", "--val-every", "30", "--ckpt-every", "30", *COMMON]) == 0
    assert main_idm(["--data", *data, "--out", str(r["idm"]), "--video", str(r["video"] / tu.LATEST),
                     "--steps", "30", "--batch-size", "16", "--lr", "2e-3", "--val-every", "30",
                     "--ckpt-every", "30", "--label-fraction", "0.5", *COMMON]) == 0
    assert main_baseline(["--data", *data, "--out", str(r["baseline"]), "--tokenizer", tok_ckpt,
                          "--steps", "10", "--batch-size", "8", "--val-every", "10", "--ckpt-every", "10",
                          "--early-weight", "3", "--early-frames", "2", "--override", "idm.use_state=false",
                          "--augment", "default", "--views", "2", *COMMON]) == 0
    # the UWM head, its encoder and head started from the baseline's weights
    r["uwm"] = base / "uwm"
    assert main_idm(["--data", *data, "--out", str(r["uwm"]), "--video", str(r["video"] / tu.LATEST),
                     "--head", "uwm", "--init-actor", str(r["baseline"] / tu.LATEST), "--steps", "30",
                     "--batch-size", "16", "--lr", "2e-3", "--val-every", "30", "--ckpt-every", "30", *COMMON]) == 0
    # the VPP head (video tokens, no frames)
    r["vpp"] = base / "vpp"
    assert main_idm(["--data", *data, "--out", str(r["vpp"]), "--video", str(r["video"] / tu.LATEST),
                     "--head", "vpp", "--steps", "30", "--batch-size", "16", "--lr", "2e-3", "--val-every", "30",
                     "--ckpt-every", "30", *COMMON]) == 0
    # the shared backbone (joint): the video model trains on with the head, EMA'd, resumed
    r["shared"] = base / "shared"
    shared = ["--data", *data, "--out", str(r["shared"]), "--video", str(r["video"] / tu.LATEST), "--head", "shared",
              "--batch-size", "16", "--lr", "2e-3", "--ema", "0.9", "--val-every", "15", "--ckpt-every", "15", *COMMON]
    assert main_idm([*shared, "--steps", "15"]) == 0
    assert main_idm([*shared, "--steps", "30", "--resume"]) == 0
    r["data"] = [Path(d) for d in data]
    torch.set_num_threads(before)
    return r


def test_tokenizer_run(runs):
    first, last = early_late(runs["tok"])
    assert last < first
    tok = Tokenizer.from_checkpoint(runs["tok"] / tu.LATEST)
    assert tok.config.image_size == 16 and tok.config.latent_scale != 1.0  # calibrated at the end
    _, meta = load_checkpoint(runs["tok"] / tu.LATEST, expected_kind="tokenizer")
    assert meta["extra"]["step"] == 30 and meta["data_manifest_sha256"] and meta["git_revision"]
    assert meta["extra"]["fingerprint"] == tok.fingerprint()
    vals = [h for h in history(runs["tok"]) if "val/psnr" in h]
    assert [h["step"] for h in vals] == [15, 30] and math.isfinite(vals[-1]["val/psnr"])
    assert 0 < vals[-1]["val/object_l1"] < 1
    assert (runs["tok"] / tu.LOSS_PNG).stat().st_size > 0


def test_tokenizer_fine_tunes_from_a_policy_checkpoint(runs, tmp_path):
    """--init takes the tokenizer a policy checkpoint carries (how a shipped policy's tokenizer is
    adapted to new scenes)."""
    src = runs["baseline"] / tu.LATEST
    out = tmp_path / "tok"
    args = ["--data", *map(str, runs["data"]), "--init", str(src), "--steps", "2", "--batch-size", "8",
            "--augment", "default", *COMMON]
    assert main_tokenizer([*args, "--out", str(out), "--camera-weight", "wrist=3"]) == 0
    policy_tok = Tokenizer.from_checkpoint(runs["tok"] / tu.LATEST)  # what the baseline was trained on
    tuned = Tokenizer.from_checkpoint(out / tu.LATEST)
    assert tuned.config.latent_shape == policy_tok.config.latent_shape
    assert tuned.fingerprint() != policy_tok.fingerprint()  # it trained
    assert load_checkpoint(out / tu.LATEST)[1]["extra"]["camera_weight"] == {"wrist": 3}
    with pytest.raises(SystemExit, match=r"--camera-weight names cameras \['nose'\]; the data has"):
        main_tokenizer([*args, "--out", str(tmp_path / "bad"), "--camera-weight", "nose=2"])
    for bad in ("wrist=0", "wrist", "wrist=1.5"):  # argparse's error (exit 2), naming the item
        with pytest.raises(SystemExit):
            main_tokenizer([*args, "--out", str(tmp_path / "bad"), "--camera-weight", bad])
    with pytest.raises(SystemExit):  # the object weight weighs nominal-view latents: --target-look only
        main_tokenizer([*args, "--out", str(tmp_path / "bad"), "--object-weight", "2"])


def test_camera_indices_repeat_a_weighted_cameras_images(runs):
    assert camera_indices(["camera", "wrist", "wrist", "camera"], {"wrist": 2}) == [0, 1, 1, 2, 2, 3]
    assert camera_indices(["camera", "wrist"], {}) == [0, 1]
    images = ImageSet(runs["data"], {ref.key for ref in list_episodes(runs["data"])}, 16)
    assert len(images.camera) == len(images) and set(images.camera) == {"camera", "wrist"}
    assert images.camera.count("camera") == images.camera.count("wrist")  # every frame of both cameras


def test_video_run(runs):
    first, last = early_late(runs["video"])
    assert last < first
    states, meta = load_checkpoint(runs["video"] / tu.LATEST, expected_kind="video")
    assert set(states) == {"video", "state_norm", "tokenizer"}
    cfg = meta["config"]
    assert cfg["instructions"][0] == "<unk>" and len(cfg["instructions"]) == 3  # vocabulary from manifests
    assert cfg["tokenizer"]["latent_scale"] != 1.0
    from avdp_ros.model.config import PolicyConfig
    from avdp_ros.model.video import VideoModel

    VideoModel(PolicyConfig.from_dict(cfg)).load_state_dict(states["video"])
    last_val = [h for h in history(runs["video"]) if "val/psnr_1" in h][-1]
    assert {"val/psnr_2", "val/ssim_1", "val/psnr_tokenizer"} <= last_val.keys()
    assert (runs["video"] / "rollout.gif").stat().st_size > 0 and (runs["video"] / tu.LOSS_PNG).exists()
    # the video model trains on action-free episodes too; the latents were cached once per dataset
    for d in runs["data"]:
        assert len(list((d / "latents").iterdir())) == 1


def test_idm_and_baseline_runs(runs):
    first, last = early_late(runs["idm"])
    assert last < first
    states, meta = load_checkpoint(runs["idm"] / tu.LATEST, expected_kind="idm")
    assert set(states) == {"idm", "video", "video_state_norm", "tokenizer"}
    assert "action_norm.mean" in states["idm"] and "state_norm.std" in states["idm"]
    train_eps = meta["extra"]["train_episodes"]
    val_eps = set(meta["extra"]["val_episodes"])
    assert train_eps and not (set(train_eps) & val_eps)
    assert all(not k.startswith("push/ep04") and not k.startswith("push/ep05") for k in train_eps)  # action-free
    val = [h for h in history(runs["idm"]) if "val/pos_mm" in h][-1]
    assert {"val/rot_deg", "val/gripper_mm", "val/gt_future/pos_mm"} <= val.keys()
    states, meta = load_checkpoint(runs["baseline"] / tu.LATEST, expected_kind="baseline")
    assert set(states) == {"baseline", "tokenizer"} and meta["extra"]["step"] == 10
    assert meta["extra"]["augment"]["views"] == 2 and meta["extra"]["augment"]["hue"] > 0  # recorded
    assert load_checkpoint(runs["idm"] / tu.LATEST)[1]["extra"]["augment"] is None
    assert meta["config"]["idm"]["use_state"] is False and not any("state_proj" in k for k in states["baseline"])
    # failed demonstrations never train actions (some of them are in the train split)
    assert runs["failed"] - set(meta["extra"]["val_episodes"])
    assert not runs["failed"] & set(meta["extra"]["train_episodes"])


def test_cached_video_features_equal_recomputed_ones(runs):
    from avdp_ros.data.latents import LatentDataset, cache_latents
    from avdp_ros.model.config import PolicyConfig
    from avdp_ros.model.idm import Normalizer
    from avdp_ros.model.video import VideoModel

    states, meta = load_checkpoint(runs["video"] / tu.LATEST, expected_kind="video")
    cfg = PolicyConfig.from_dict(meta["config"])
    video, norm = VideoModel(cfg), Normalizer(10)
    video.load_state_dict(states["video"])
    norm.load_state_dict(states["state_norm"])
    video.eval()
    tok = Tokenizer.from_checkpoint(runs["tok"] / tu.LATEST)
    caches = [(d, cache_latents(d, tok, progress=False)) for d in runs["data"]]
    windows = LatentDataset(caches, cfg.context_frames, cfg.future_frames, cfg.horizon, cfg.instructions)
    table = video_feature_table(windows, video, norm, cfg.context_frames, torch.device("cpu"), batch_size=7,
                                progress=False)
    assert table.shape == (len(windows), cfg.context_frames + cfg.future_frames, cfg.video.n_embd)
    ds = WithFeatures(windows, table)
    for i in (0, len(windows) // 2, len(windows) - 1):
        w = ds[i]
        seq = torch.cat([w["context"], w["future"]])[None]
        direct = video.features(seq, w["instr"][None], norm.normalize(w["states"][None, :cfg.context_frames]))
        torch.testing.assert_close(w["video_features"], direct[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="feature rows"):
        WithFeatures(windows, table[:-1])


def test_early_window_indices_repeat_episode_starts():
    windows = SimpleNamespace(index=[(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 0), (1, 0, 0), (1, 1, 1), (1, 4, 1)])
    assert early_window_indices(windows, early_frames=2, weight=3) == [0, 0, 0, 1, 1, 1, 2, 3, 4, 4, 4, 5, 5, 5, 6]
    assert early_window_indices(windows, early_frames=2, weight=1) == list(range(7))
    assert early_window_indices(windows, early_frames=0, weight=5) == list(range(7))
    windows.refs = [SimpleNamespace(root=Path("true")), SimpleNamespace(root=Path("pseudo"))]
    assert early_window_indices(windows, 2, 2, {Path("true"): 3}) == [0] * 6 + [1] * 6 + [2] * 3 + [3] * 3 + [
        4, 4, 5, 5, 6]  # the start x2, episode 0's dataset x3 on top
    with pytest.raises(SystemExit, match="--data-weight 8: expected one integer >= 1 for each of the 2 --data"):
        main_baseline(["--data", "x", "w", "--out", "y", "--tokenizer", "z", "--data-weight", "8"])
    with pytest.raises(SystemExit, match="early-weight 0"):
        main_baseline(["--data", "x", "--out", "y", "--tokenizer", "z", "--early-weight", "0"])
    with pytest.raises(SystemExit, match="--views 1: expected >= 2 with --augment"):
        main_baseline(["--data", "x", "--out", "y", "--tokenizer", "z", "--augment", "default", "--views", "1"])


def test_label_fraction_is_seeded_subset(runs):
    _, meta = load_checkpoint(runs["idm"] / tu.LATEST, expected_kind="idm")
    _, full = load_checkpoint(runs["baseline"] / tu.LATEST, expected_kind="baseline")
    half, every = meta["extra"]["train_episodes"], full["extra"]["train_episodes"]
    assert set(half) < set(every) and len(half) == round(len(every) * 0.5)


def test_resume_continues_from_saved_step(runs):
    out = runs["baseline"]
    n_before = len(history(out))
    resume = ["--data", *map(str, runs["data"]), "--out", str(out), "--batch-size", "8", "--val-every", "15",
              "--ckpt-every", "15", "--resume", *COMMON]
    _, meta = load_checkpoint(out / tu.LATEST, expected_kind="baseline")
    assert meta["config"]["action_temperature"] == 1.0
    # an edit that would not fit the trained weights is refused, not silently ignored
    with pytest.raises(SystemExit, match="horizon"):
        main_baseline([*resume, "--steps", "15", "--override", "horizon=7"])
    # a sampling edit is applied to the resumed model
    assert main_baseline([*resume, "--steps", "15", "--override", "action_temperature=0"]) == 0
    steps = [h["step"] for h in history(out)]
    assert steps[:n_before] == [5, 10] and steps[n_before:] == [15]
    _, meta = load_checkpoint(out / tu.LATEST, expected_kind="baseline")
    assert meta["extra"]["step"] == 15 and meta["config"]["action_temperature"] == 0.0


def test_init_fine_tunes_baseline_and_video_on_a_cropped_tokenizer(runs, tmp_path):
    data = [str(d) for d in runs["data"]]
    tok_out, base_out = tmp_path / "tok_crop", tmp_path / "base_crop"
    with pytest.raises(SystemExit, match="nose"):
        main_tokenizer(["--data", *data, "--out", str(tok_out), "--crop", "nose=0,0,1,1", *COMMON])
    with pytest.raises(SystemExit):  # a box outside the frame: argparse's error (exit 2)
        main_tokenizer(["--data", *data, "--out", str(tok_out), "--crop", "camera=0.5,0,0.75,1", *COMMON])
    # lr ~0: the fine-tunes start from (and stay at) the --init weights, with the new crop
    tiny_lr = ["--steps", "4", "--lr", "1e-12", "--batch-size", "8", "--val-every", "4", "--ckpt-every", "4"]
    assert main_tokenizer(["--data", *data, "--out", str(tok_out), "--init", str(runs["tok"] / tu.LATEST),
                           "--crop", "camera=0.25,0,0.75,1", *tiny_lr, *COMMON]) == 0
    init_tok, _ = load_checkpoint(runs["tok"] / tu.LATEST, expected_kind="tokenizer")
    new_tok, tmeta = load_checkpoint(tok_out / tu.LATEST, expected_kind="tokenizer")
    assert tmeta["config"]["crops"] == {"camera": [0.25, 0.0, 0.75, 1.0]}
    assert max((new_tok["tokenizer"][k] - v).abs().max().item() for k, v in init_tok["tokenizer"].items()) < 1e-6
    assert main_baseline(["--data", *data, "--out", str(base_out), "--init", str(runs["baseline"] / tu.LATEST),
                          "--tokenizer", str(tok_out / tu.LATEST), *tiny_lr, *COMMON]) == 0
    init, imeta = load_checkpoint(runs["baseline"] / tu.LATEST, expected_kind="baseline")
    new, meta = load_checkpoint(base_out / tu.LATEST, expected_kind="baseline")
    assert meta["config"]["tokenizer"] == tmeta["config"] and meta["config"]["idm"] == imeta["config"]["idm"]
    assert max((new["baseline"][k] - v).abs().max().item() for k, v in init["baseline"].items()) < 1e-6
    assert [h["step"] for h in history(base_out) if "loss" in h][0] <= 4  # a new schedule, not a resume
    # the video model likewise (its state statistics come along with its weights)
    video_out = tmp_path / "video_crop"
    assert main_video(["--data", *data, "--out", str(video_out), "--init", str(runs["video"] / tu.LATEST),
                       "--tokenizer", str(tok_out / tu.LATEST), *tiny_lr, *COMMON]) == 0
    vinit, vimeta = load_checkpoint(runs["video"] / tu.LATEST, expected_kind="video")
    vnew, vmeta = load_checkpoint(video_out / tu.LATEST, expected_kind="video")
    assert vmeta["config"]["tokenizer"] == tmeta["config"] and vmeta["config"]["video"] == vimeta["config"]["video"]
    for part in ("video", "state_norm"):
        assert max((vnew[part][k] - v).abs().max().item() for k, v in vinit[part].items()) < 1e-6
    with pytest.raises(SystemExit, match="--init does not apply"):
        main_video(["--data", *data, "--out", str(video_out), "--init", str(runs["video"] / tu.LATEST),
                    "--resume", *COMMON])
    # data with a task the checkpoint's vocabulary lacks: refused, not silently read as <unk>
    manifest = Path(data[0]) / "manifest.json"
    original = manifest.read_text()
    m = json.loads(original)
    m["episodes"][0]["instruction"] = "stack the blocks"
    manifest.write_text(json.dumps(m))
    try:
        with pytest.raises(SystemExit, match="does not know: \\['stack the blocks'\\]"):
            main_baseline(["--data", *data, "--out", str(tmp_path / "new_task"), "--init",
                           str(runs["baseline"] / tu.LATEST), *tiny_lr, *COMMON])
    finally:
        manifest.write_text(original)  # the module's other tests share this dataset


def test_schedule_split_and_metrics():
    cfg = tu.TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert tu.lr_at(0, cfg) == pytest.approx(0.1) and tu.lr_at(9, cfg) == pytest.approx(1.0)
    assert tu.lr_at(100, cfg) == pytest.approx(0.1) and tu.lr_at(55, cfg) == pytest.approx(0.55)
    keys = [f"d/e{i}" for i in range(10)]
    train, val = train_data.split_keys(keys, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == sorted(keys) and train_data.split_keys(keys, 0.2, 3) == (train, val)
    subset = train_data.label_subset(train, 0.5, 3)
    assert subset == train_data.label_subset(train, 0.5, 3) and len(subset) == 4
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(metrics.psnr(x, x)).sum() == 0 and metrics.psnr(x, x).min() > 90
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(2))
    # object_l1: the error on a small green disc the reconstruction lost, unmoved by the background
    scene = torch.full((2, 3, 16, 16), 0.5)
    scene[0, :, 2:5, 2:5] = torch.tensor([0.1, 0.8, 0.2])[:, None, None]
    lost = scene.clone()
    lost[0, :, 2:5, 2:5] = 0.5
    lost[:, :, 10:, 10:] += 0.01  # background noise: not part of the object error
    obj = metrics.object_l1(lost, scene)
    assert obj[0].item() == pytest.approx((0.4 + 0.3 + 0.3) / 3) and torch.isnan(obj[1])  # no object in image 1
    assert metrics.psnr(lost, scene)[0] > 20  # while the frame-wide metric calls it good
    mask = metrics.object_mask(scene)  # the disc, nothing of the grey table
    assert mask[0].sum() == 9 and mask[0, 2:5, 2:5].all() and not mask[1].any()
    latents = metrics.object_latents((scene * 255).to(torch.uint8), (4, 4))  # 4x4-pixel patches
    assert latents.shape == (2, 1, 4, 4) and latents[0, 0, :2, :2].all() and latents.sum() == 4  # the disc's 4
    torch.testing.assert_close(metrics.object_latents(scene, (4, 4)), latents)  # float images alike
    a = torch.zeros(4, 10)
    a[:, 3] = 1.0
    a[:, 7] = 1.0  # identity rotation in 6D
    b = a.clone()
    b[:, 0] += 0.01
    b[:, 9] += 0.002
    err = metrics.action_errors(b, a)
    assert err["pos_mm"] == pytest.approx(10.0, rel=1e-4) and err["gripper_mm"] == pytest.approx(2.0, rel=1e-4)
    assert err["rot_deg"] == pytest.approx(0.0, abs=1e-2)


def test_optimizer_state_round_trip(tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    opt = tu.make_optimizer(model, tu.TrainConfig())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tu.save_optimizer(opt, tmp_path / "opt.safetensors")
    other = tu.make_optimizer(model, tu.TrainConfig())
    tu.load_optimizer(other, tmp_path / "opt.safetensors")
    a, b = opt.state_dict(), other.state_dict()
    for idx in a["state"]:
        for k, v in a["state"][idx].items():
            torch.testing.assert_close(torch.as_tensor(b["state"][idx][k]), torch.as_tensor(v))


def test_preset_overrides_are_validated():
    import argparse

    from avdp_ros.train.sources import preset_with_overrides as _preset_with_overrides

    cfg = _preset_with_overrides(argparse.Namespace(preset="base", override=["idm.patch_size=2", "horizon=6"]))
    assert cfg.idm.patch_size == 2 and cfg.horizon == 6 and cfg.video.patch_size == 2
    with pytest.raises(SystemExit, match="idm.nope"):
        _preset_with_overrides(argparse.Namespace(preset="base", override=["idm.nope=1"]))
    with pytest.raises(SystemExit, match="does not divide"):
        _preset_with_overrides(argparse.Namespace(preset="base", override=["idm.patch_size=3"]))


def test_resume_overrides_reach_fields_an_older_checkpoint_lacks():
    """--resume / --init may switch on a training option (video.context_noise) in a checkpoint
    written before the field existed; architecture edits stay refused."""
    import argparse

    from avdp_ros.model.config import preset
    from avdp_ros.train.sources import resume_config

    old = preset("tiny").to_dict()
    del old["video"]["context_noise"]
    d = resume_config(argparse.Namespace(override=["video.context_noise=0.3", "idm.future_drop=0.5"]), old)
    assert d["video"]["context_noise"] == 0.3 and d["idm"]["future_drop"] == 0.5
    assert resume_config(argparse.Namespace(override=[]), old)["video"]["context_noise"] == 0.0
    with pytest.raises(SystemExit, match="video.n_layer"):
        resume_config(argparse.Namespace(override=["video.n_layer=3"]), old)


def test_ema_update_ramps_its_decay_and_copies_buffers():
    model = torch.nn.BatchNorm1d(2)  # weight, bias + running stats (buffers)
    ema = tu.EMA(model, decay=0.999)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.running_mean.fill_(3.0)
    ema.update(model)  # first update: decay min(0.999, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(ema.model.weight, d * start + (1 - d) * model.weight)
    torch.testing.assert_close(ema.model.running_mean, model.running_mean)
    assert not ema.model.weight.requires_grad and ema.model.weight.data_ptr() != model.weight.data_ptr()
    with pytest.raises(ValueError, match="ema_decay 1.0"):
        tu.TrainConfig(ema_decay=1.0)


def _linear_run(out: Path, steps: int, lr: float, ema: float) -> tu.Run:
    """A loop run on a line fit, saving its weights as a checkpoint would."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def save(m, path: Path, extra: dict) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_file(tu.state_tensors(m), str(path / "model.safetensors"))

    cfg = tu.TrainConfig(steps=steps, batch_size=16, lr=lr, warmup_steps=1, log_every=5, val_every=1000,
                         ckpt_every=1000, device="cpu", ema_decay=ema)
    return tu.Run(out=out, kind="line", model=torch.nn.Linear(3, 1), dataset=torch.utils.data.TensorDataset(x, y),
                  loss_fn=lambda m, b: (((m(b[0]) - b[1]) ** 2).mean(), {}), cfg=cfg, save_fn=save)


def test_ema_checkpoint_holds_the_average_and_resume_trains_on(tmp_path: Path):
    from safetensors.torch import load_file

    out = tmp_path / "line"
    run = _linear_run(out, steps=40, lr=0.05, ema=0.9)
    tu.train(run, tu.Dist(), torch.device("cpu"))
    shipped = load_file(str(out / tu.LATEST / "model.safetensors"))
    raw = load_file(str(out / tu.LATEST / tu.RAW_WEIGHTS))
    torch.testing.assert_close(raw["weight"], run.model.weight.detach())  # the optimised weights, for resume
    assert (shipped["weight"] - raw["weight"]).abs().max() > 1e-4  # the checkpoint holds their average
    assert json.loads((out / tu.LATEST / tu.TRAINER_FILE).read_text())["ema_updates"] == 40
    # resume with lr ~0: training goes on from the raw weights, the EMA from the checkpoint's
    again = _linear_run(out, steps=41, lr=1e-12, ema=0.9)
    again.model.load_state_dict(shipped)  # as the CLI loads the checkpoint before tu.train
    tu.train(again, tu.Dist(), torch.device("cpu"), resume=True)
    torch.testing.assert_close(again.model.weight.detach(), raw["weight"])
    d = min(0.9, 42 / 51)  # the 41st update's decay, counted on from the saved 40
    expected = d * shipped["weight"] + (1 - d) * raw["weight"]
    torch.testing.assert_close(load_file(str(out / tu.LATEST / "model.safetensors"))["weight"], expected)
    # without --ema the loop ships the optimised weights and keeps no second copy
    plain = tmp_path / "plain"
    tu.train(_linear_run(plain, steps=5, lr=0.05, ema=0.0), tu.Dist(), torch.device("cpu"))
    assert not (plain / tu.LATEST / tu.RAW_WEIGHTS).exists()


def test_ema_flag_is_validated():
    with pytest.raises(SystemExit, match="--ema: ema_decay 1.5"):
        main_baseline(["--data", "x", "--out", "y", "--tokenizer", "z", "--ema", "1.5"])


def test_uwm_idm_run_and_init_actor(runs):
    """--head uwm: the config says so, the loss goes down, validation reads the predicted future at
    future_t, the true one at 0 and none at 1; --init-actor copies what fits from a baseline, its
    normalisers included."""
    from avdp_ros.model.config import PolicyConfig
    from avdp_ros.model.idm import InverseDynamics
    from avdp_ros.train.jobs.action import init_actor

    first, last = early_late(runs["uwm"])
    assert last < first
    states, meta = load_checkpoint(runs["uwm"] / tu.LATEST, expected_kind="idm")
    cfg = PolicyConfig.from_dict(meta["config"])
    assert cfg.idm.future_noise == "independent" and cfg.idm.video_feature_dim == 0
    assert any(k.startswith("encoder.future_t_embed.") for k in states["idm"])
    val = [h for h in history(runs["uwm"]) if "val/pos_mm" in h][-1]
    assert {"val/gt_future/pos_mm", "val/no_future/pos_mm"} <= val.keys()
    fresh = InverseDynamics(cfg)
    line = init_actor(fresh, str(runs["baseline"] / tu.LATEST))
    base = load_checkpoint(runs["baseline"] / tu.LATEST)[0]["baseline"]
    got = fresh.state_dict()
    assert torch.equal(got["head.action_out.weight"], base["head.action_out.weight"])
    assert torch.equal(got["encoder.pos_frame"][:1], base["encoder.pos_frame"])  # the past frame
    assert "encoder.future_t_embed" in line and "encoder.state_proj" in line  # the baseline had no state input
    assert torch.equal(got["action_norm.std"], base["action_norm.std"])  # what its weights learned under
    with pytest.raises(SystemExit, match="a 'video' checkpoint; expected a baseline or idm policy"):
        init_actor(fresh, str(runs["video"] / tu.LATEST))


def test_attach_video_swaps_the_video_model_of_a_head_that_reads_none(runs, tmp_path):
    """avdp-attach-video: the UWM head never read its video model in training, so another one on
    the same tokenizer goes in as it is; a head that learned from the old model's features, or a
    video model of other shapes, is refused with the reason."""
    from avdp_ros.model.policy import Policy
    from avdp_ros.tools.attach_video import main as attach_video

    other = tmp_path / "video2"  # trained on with other noise levels: how it was trained, not what it computes
    assert main_video(["--data", *map(str, runs["data"]), "--out", str(other), "--init", str(runs["video"] / tu.LATEST),
                       "--steps", "2", "--batch-size", "8", "--override", "video.context_noise=0.3", *COMMON]) == 0
    # a policy written before VideoConfig.context_noise existed (its checkpoint lacks the field)
    old = tmp_path / "uwm_old"
    shutil.copytree(runs["uwm"] / tu.LATEST, old)
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["config"]["video"]["context_noise"]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    out = tmp_path / "uwm2"
    assert attach_video(["--policy", str(old), "--video", str(other / tu.LATEST), "--out", str(out)]) == 0
    assert load_checkpoint(out)[1]["config"]["video"]["context_noise"] == 0.3  # the config of the model it holds
    new = load_checkpoint(out)[0]
    want = load_checkpoint(other / tu.LATEST)[0]
    assert all(torch.equal(new["video"][k], want["video"][k]) for k in want["video"])
    assert all(torch.equal(new["video_state_norm"][k], want["state_norm"][k]) for k in want["state_norm"])
    assert all(torch.equal(new["idm"][k], v) for k, v in load_checkpoint(runs["uwm"] / tu.LATEST)[0]["idm"].items())
    Policy.from_checkpoint(out)  # loads as a policy
    with pytest.raises(SystemExit):
        attach_video(["--policy", str(runs["idm"] / tu.LATEST), "--video", str(other / tu.LATEST),
                      "--out", str(tmp_path / "teacher")])
    from avdp_ros.tools.attach_video import attach

    with pytest.raises(ValueError, match="reads the features of its own video model"):
        attach(runs["idm"] / tu.LATEST, other / tu.LATEST, tmp_path / "teacher")
    with pytest.raises(ValueError, match="expected a video \\+ IDM policy"):
        attach(runs["baseline"] / tu.LATEST, other / tu.LATEST, tmp_path / "base")


def test_blend_policy_is_a_point_between_a_policy_and_its_fine_tune(runs, tmp_path):
    """avdp-blend-policy: every weight of the policy moved the fraction alpha of the way to its
    fine-tune (WiSE-FT), the tokenizer untouched; an alpha outside (0, 1), another kind, or a
    fine-tune that reads another tokenizer is refused with the reason."""
    from avdp_ros.model.policy import Policy
    from avdp_ros.tools.attach_tokenizer import write_policy
    from avdp_ros.tools.blend_policy import blend
    from avdp_ros.tools.blend_policy import main as blend_policy

    start = runs["baseline"] / tu.LATEST
    tuned = tmp_path / "ft"
    assert main_baseline(["--data", *map(str, runs["data"]), "--out", str(tuned), "--init", str(start),
                          "--steps", "3", "--batch-size", "8", "--lr", "1e-2", *COMMON]) == 0
    out = tmp_path / "blend"
    assert blend_policy(["--policy", str(start), "--tuned", str(tuned / tu.LATEST), "--out", str(out),
                         "--alpha", "0.25"]) == 0
    (a, _), (b, meta), (mid, mmeta) = (load_checkpoint(p) for p in (start, tuned / tu.LATEST, out))
    moved = [k for k in a["baseline"] if not torch.equal(a["baseline"][k], b["baseline"][k])]
    assert moved  # the fine-tune changed the head, so the blend is a real point between
    for k, v in a["baseline"].items():
        torch.testing.assert_close(mid["baseline"][k], v + 0.25 * (b["baseline"][k] - v))
    assert all(torch.equal(mid["tokenizer"][k], v) for k, v in a["tokenizer"].items())
    assert mmeta["extra"]["blended_from"]["alpha"] == 0.25 and mmeta["config"] == meta["config"]
    Policy.from_checkpoint(out)  # loads as a policy
    for alpha in ("0", "1", "nan"):
        with pytest.raises(SystemExit):
            blend_policy(["--policy", str(start), "--tuned", str(tuned / tu.LATEST), "--out", str(tmp_path / alpha),
                          "--alpha", alpha])
    with pytest.raises(ValueError, match="expected 'baseline'"):
        blend(start, runs["uwm"] / tu.LATEST, tmp_path / "kind")
    other = {**b, "tokenizer": {k: v + 0.01 if v.is_floating_point() else v for k, v in b["tokenizer"].items()}}
    write_policy(tmp_path / "other_tok", meta["kind"], other, meta["config"], meta["extra"])
    with pytest.raises(ValueError, match="reads another tokenizer"):
        blend(start, tmp_path / "other_tok", tmp_path / "tok")


def test_vpp_idm_run_plans_from_video_tokens(runs):
    """--head vpp: the loss goes down, validation has no frame futures to compare, and the policy
    plans from the video model's tokens (frames only when asked for, to show them)."""
    import numpy as np

    from avdp_ros.model.policy import Policy

    first, last = early_late(runs["vpp"])
    assert last < first
    states, meta = load_checkpoint(runs["vpp"] / tu.LATEST, expected_kind="idm")
    assert meta["config"]["idm"]["future_input"] == "tokens"
    assert any(k.startswith("encoder.token_pool.") for k in states["idm"])
    val = [h for h in history(runs["vpp"]) if "val/pos_mm" in h][-1]
    assert "val/gt_future/pos_mm" not in val
    policy = Policy.from_checkpoint(runs["vpp"] / tu.LATEST)
    rng = np.random.default_rng(0)
    obs = {"camera": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
           "wrist": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
           "ee_pose": np.array([0.45, 0, 0.3, 1, 0, 0, 0]), "gripper": 0.04, "instruction": ""}
    out = policy.infer(obs, return_frames=True)
    assert out["actions"].shape == (policy.cfg.horizon, 8) and out["predicted_frames"].shape[0] == 2
    with pytest.raises(ValueError, match="future_images do not apply"):
        policy.infer(obs, future_images={})


def test_vpp_token_draws_cache_the_tokens_reproducibly(runs, tmp_path):
    """--token-draws K: the tokens of K noise draws per window are computed once and one is read
    each step; the loss still falls, the same seed gives the same weights, and a head that does not
    read the tokens of a frozen video model refuses it."""
    args = ["--data", *map(str, runs["data"]), "--video", str(runs["video"] / tu.LATEST), "--head", "vpp",
            "--steps", "30", "--batch-size", "16", "--lr", "2e-3", "--val-every", "30", "--ckpt-every", "30",
            "--token-draws", "2", *COMMON]
    for name in ("a", "b"):
        assert main_idm([*args, "--out", str(tmp_path / name)]) == 0
    first, last = early_late(tmp_path / "a")
    assert last < first
    (sa, meta), (sb, _) = (load_checkpoint(tmp_path / n / tu.LATEST, expected_kind="idm") for n in ("a", "b"))
    assert meta["extra"]["token_draws"] == 2
    assert all(torch.equal(sa["idm"][k], sb["idm"][k]) for k in sa["idm"])
    for head in ("uwm", "shared"):
        with pytest.raises(SystemExit, match="--token-draws 2: only for a head that reads the tokens of a frozen"):
            main_idm([*args, "--head", head, "--out", str(tmp_path / head)])
    with pytest.raises(SystemExit, match="--token-draws -1: expected >= 0"):
        main_idm([*args, "--token-draws", "-1", "--out", str(tmp_path / "neg")])


def test_with_tokens_reads_one_of_the_cached_draws():
    windows = [{"x": torch.tensor(i)} for i in range(3)]
    table = torch.arange(3 * 4 * 2 * 5, dtype=torch.float16).reshape(3, 4, 2, 5)
    ds = train_data.WithTokens(windows, table)
    torch.manual_seed(0)
    seen = {int(ds[1]["video_tokens"][0, 0]) for _ in range(40)}
    assert seen == {int(table[1, d, 0, 0]) for d in range(4)}  # every draw, only window 1's
    assert ds[0]["video_tokens"].dtype == torch.float32 and ds[0]["video_tokens"].shape == (2, 5)
    with pytest.raises(ValueError, match="expected \\(3, draws, L, D\\)"):
        train_data.WithTokens(windows, table[:2])


def test_shared_idm_run_trains_its_video_model(runs, tmp_path):
    """--head shared: both losses logged and falling, the checkpoint's video model moved away from
    the one it started from (and is what the policy plans with), validation reports the video
    loss, and avdp-attach-video refuses a head that reads its own video model's tokens."""
    from avdp_ros.model.policy import Policy
    from avdp_ros.tools.attach_video import attach

    h = history(runs["shared"])
    assert all("video_loss" in e for e in h if "action_loss" in e)
    assert [e["step"] for e in h if "val/video_loss" in e] == [15, 30]
    first, last = early_late(runs["shared"], "action_loss")
    assert last < first
    states, meta = load_checkpoint(runs["shared"] / tu.LATEST, expected_kind="idm")
    assert meta["config"]["idm"]["video_train"] == "joint" and meta["extra"]["step"] == 30
    start = load_checkpoint(runs["video"] / tu.LATEST)[0]["video"]
    assert any(not torch.equal(states["video"][k], start[k]) for k in start)
    policy = Policy.from_checkpoint(runs["shared"] / tu.LATEST)
    assert all(torch.equal(policy.video.state_dict()[k], v) for k, v in states["video"].items())
    with pytest.raises(ValueError, match="reads its own video model's hidden states"):
        attach(runs["shared"] / tu.LATEST, runs["video"] / tu.LATEST, tmp_path / "x")


def test_pseudo_labels_from_the_true_future(runs, tmp_path):
    """avdp-pseudo-label: every episode, action-free or not, comes out labelled by the IDM (one
    action per observation, the frames untouched) in a dataset the trainers read; where true
    labels exist the summary reports the IDM's error against them. A head without frames is refused."""
    import numpy as np

    from avdp_ros.data.dataset import EpisodeDataset
    from avdp_ros.tools.pseudo_label import pseudo_label

    out = tmp_path / "labelled"
    summary = pseudo_label(runs["uwm"] / tu.LATEST, [runs["data"][0]], out, progress=False)
    src, new = EpisodeDataset(runs["data"][0]), EpisodeDataset(out, verify_hashes=True)
    assert summary["episodes"] == len(new) == len(src) == 6
    assert summary["labelled_episodes_compared"] == 4 and summary["error_vs_true_labels"]["pos_mm"] > 0
    for i in range(len(src)):
        a, b = src[i], new[i]
        assert np.array_equal(a["camera"], b["camera"]) and np.array_equal(a["ee_pose"], b["ee_pose"])
        assert b["action"].shape == (len(a["ee_pose"]), 8) and np.isfinite(b["action"]).all()
        for cam in src.cameras:  # the frames are the source's files, linked, not copies (same file system here)
            assert ((src.root / "episodes" / src.episodes[i]["name"] / f"{cam}.npy").stat().st_ino
                    == (out / "episodes" / new.episodes[i]["name"] / f"{cam}.npy").stat().st_ino)
        assert new.episodes[i]["has_actions"] and "pseudo-label" in new.episodes[i]["action_topic"]
    assert new.action_ratio == 1
    # the trainers take it
    assert main_baseline(["--data", str(out), "--out", str(tmp_path / "base"), "--tokenizer",
                          str(runs["tok"] / tu.LATEST), "--steps", "2", "--batch-size", "4", *COMMON]) == 0
    with pytest.raises(ValueError, match="expected an inverse dynamics model that reads future frames"):
        pseudo_label(runs["vpp"] / tu.LATEST, [runs["data"][0]], tmp_path / "x", progress=False)
