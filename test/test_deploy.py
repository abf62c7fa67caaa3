"""Deployment: export of the tiny policy to an ONNX bundle, the checks on it, onnxruntime-vs-torch
parity per stage and end to end, and every failure mode with its message.

Tolerances (fp32, onnxruntime CPU vs torch eager; docs/deployment.md):
    per stage outputs                    max abs diff <= 1e-4 * max(1, max |torch output|)
    video rollout (latents, features)    same
    action chunk                         position <= 1e-4 m, quaternion <= 1e-4, gripper <= 1e-4 m
    predicted frames (uint8)             <= 1 grey level
TensorRT fp16 (gated on a GPU): position <= 1e-2 m, quaternion <= 2e-2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from avdp_ros.data.files import file_sha256 as sha256_file
from avdp_ros.deploy import npops
from avdp_ros.deploy.backends import load_policy
from avdp_ros.deploy.bundle import Bundle, BundleError, HashMismatchError, ShapeMismatchError
from avdp_ros.deploy.export import OPSET, TRT10_OPS, export_bundle, graph_ops
from avdp_ros.deploy.ort import PROVIDERS, OrtRunner, ProviderError, resolve_providers
from avdp_ros.deploy.runtime import PolicyMeta, StagedPolicy
from avdp_ros.deploy.stages import build_stages, example_inputs
from avdp_ros.deploy.trt import EngineMismatchError, EngineTarget, engine_key, resolve_engine
from avdp_ros.geometry import axis_angle_to_quat
from avdp_ros.model import rotation
from avdp_ros.model.checkpoint import save_checkpoint
from avdp_ros.model.config import idm_head, preset
from avdp_ros.model.idm import ActionOnlyPolicy, InverseDynamics, Normalizer
from avdp_ros.model.policy import Policy
from avdp_ros.model.rotation import pose_to_state10
from avdp_ros.model.tokenizer import TOKENIZER_PRESETS, Tokenizer, to_float_images
from avdp_ros.model.video import VideoModel

STAGE_TOL = 1e-4
CROP = (0.25, 0.125, 0.5, 0.625)  # of the 32x32 test frames: rows 8:24, columns 4:24
POS_TOL = QUAT_TOL = 1e-4


def _stage_diff(got, ref) -> float:
    """max |got - ref| relative to the output's scale, max(1, max |ref|) (hidden features of the
    perturbed tiny model reach ~100, where fp32 rounding alone is ~1e-5)."""
    got, ref = np.asarray(got), np.asarray(ref)
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")


def _tensorrt_skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT tests need the tensorrt Python package (not importable here) and a CUDA device"
    if not torch.cuda.is_available():
        return "TensorRT tests need a CUDA device (torch sees none)"
    return None


TRT_SKIP = _tensorrt_skip_reason()
CUDA_SKIP = None if torch.cuda.is_available() else "needs a CUDA device (torch sees none)"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny idm + baseline checkpoints with non-trivial weights (as in test_policy.py)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("deploy_ckpt")
    tok_cfg = TOKENIZER_PRESETS["tiny"]
    cfg = preset("tiny")
    cfg.tokenizer = tok_cfg.to_dict()
    tok, video, vnorm = Tokenizer(tok_cfg), VideoModel(cfg), Normalizer(10)
    idm, base = InverseDynamics(cfg), ActionOnlyPolicy(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every output identical
        for m in (video, idm, base):
            for p in m.parameters():
                p.add_(0.2 * torch.randn_like(p))
    vnorm.fit(torch.randn(256, 10) * 0.1 + 0.2)
    for net in (idm, base):
        net.action_norm.fit(torch.randn(256, 10) * 0.05 + torch.tensor([0.02, 0, 0.01, 1, 0, 0, 0, 1, 0, 0.04]))
        net.state_norm.fit(torch.randn(256, 10) * 0.1 + 0.3)
    save_checkpoint(root / "idm", "idm", {"idm": idm, "tokenizer": tok, "video": video, "video_state_norm": vnorm},
                    cfg.to_dict())
    save_checkpoint(root / "baseline", "baseline", {"baseline": base, "tokenizer": tok}, cfg.to_dict())
    # a state-free policy (idm.use_state false): its encoder graph has no state input
    blind_cfg = preset("tiny")
    blind_cfg.tokenizer, blind_cfg.idm.use_state = tok_cfg.to_dict(), False
    blind = ActionOnlyPolicy(blind_cfg)
    blind.load_state_dict({k: v for k, v in base.state_dict().items() if "state_proj" not in k})
    save_checkpoint(root / "baseline_nostate", "baseline", {"baseline": blind, "tokenizer": tok},
                    blind_cfg.to_dict())
    # the scene camera cut to a region of interest (CROP) before the resize
    crop_cfg = preset("tiny")
    crop_cfg.tokenizer = dict(tok_cfg.to_dict(), crops={"camera": list(CROP)})
    save_checkpoint(root / "baseline_crop", "baseline", {"baseline": base, "tokenizer": tok}, crop_cfg.to_dict())
    # the UWM head: a noised future and its flow time in, no video features (its encoder graph
    # takes future_t), read at future_t 0.3 by default
    uwm_cfg = idm_head(preset("tiny"), "uwm")
    uwm_cfg.tokenizer, uwm_cfg.idm.future_t = tok_cfg.to_dict(), 0.3
    uwm = InverseDynamics(uwm_cfg)
    with torch.no_grad():
        for p in uwm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    uwm.load_state_dict({k: v for k, v in idm.state_dict().items() if k in uwm.state_dict()}, strict=False)
    save_checkpoint(root / "idm_uwm", "idm", {"idm": uwm, "tokenizer": tok, "video": video, "video_state_norm": vnorm},
                    uwm_cfg.to_dict())
    # the VPP head: pooled video tokens of one pass over the context and pure-noise slots
    vpp_cfg = idm_head(preset("tiny"), "vpp")
    vpp_cfg.tokenizer = tok_cfg.to_dict()
    vpp = InverseDynamics(vpp_cfg)
    with torch.no_grad():
        for p in vpp.parameters():
            p.add_(0.2 * torch.randn_like(p))
    vpp.load_state_dict({k: v for k, v in idm.state_dict().items()
                         if k in vpp.state_dict() and v.shape == vpp.state_dict()[k].shape}, strict=False)
    save_checkpoint(root / "idm_vpp", "idm", {"idm": vpp, "tokenizer": tok, "video": video, "video_state_norm": vnorm},
                    vpp_cfg.to_dict())
    # the shared backbone (--head shared): the VPP graph; its video model is the jointly trained one
    shared_cfg = idm_head(preset("tiny"), "shared")
    shared_cfg.tokenizer = tok_cfg.to_dict()
    joint_video = VideoModel(shared_cfg)
    joint_video.load_state_dict(video.state_dict())
    with torch.no_grad():
        for p in joint_video.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(root / "idm_shared", "idm", {"idm": vpp, "tokenizer": tok, "video": joint_video,
                                                 "video_state_norm": vnorm}, shared_cfg.to_dict())
    return root


@pytest.fixture(scope="module")
def bundles(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy_bundles")
    quiet = lambda *a, **k: None  # noqa: E731
    return {
        "idm": export_bundle(checkpoints / "idm", root / "idm", log=quiet),
        # the exporter's own parity run once is enough (test_onnxruntime_matches_torch_per_stage checks all)
        "idm_recompute": export_bundle(checkpoints / "idm", root / "idm_rc", video_mode="recompute", parity=False,
                                       log=quiet),
        "baseline": export_bundle(checkpoints / "baseline", root / "baseline", parity=False, log=quiet),
        "baseline_nostate": export_bundle(checkpoints / "baseline_nostate", root / "baseline_nostate", parity=False,
                                          log=quiet),
        "baseline_crop": export_bundle(checkpoints / "baseline_crop", root / "baseline_crop", parity=False, log=quiet),
        "idm_uwm": export_bundle(checkpoints / "idm_uwm", root / "idm_uwm", log=quiet),
        "idm_vpp": export_bundle(checkpoints / "idm_vpp", root / "idm_vpp", log=quiet),
        "idm_shared": export_bundle(checkpoints / "idm_shared", root / "idm_shared", log=quiet),
    }


def _obs(seed=0, size=32):
    rng = np.random.default_rng(seed)
    angle = np.array([np.pi, 0.1 * seed, 0.0])
    return {
        "camera": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        "ee_pose": np.concatenate([[0.45 + 0.01 * seed, 0.0, 0.3], axis_angle_to_quat(angle)]),
        "gripper": 0.04,
        "instruction": "push the red cube onto the green target region",
    }


def _noises(cfg, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    K, cams, (C, h, w) = cfg.future_frames, len(cfg.cameras), cfg.latent_shape
    return [{"video": torch.randn(1, K, cams, C, h, w, generator=g),
             "action": torch.randn(1, cfg.horizon, 10, generator=g),
             "future": torch.randn(1, K, cams, C, h, w, generator=g)} for _ in range(n)]


def _assert_actions_close(a, b, pos=POS_TOL, quat=QUAT_TOL):
    assert a.shape == b.shape
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=pos, rtol=0)
    np.testing.assert_allclose(a[:, 3:7], b[:, 3:7], atol=quat, rtol=0)
    np.testing.assert_allclose(a[:, 7], b[:, 7], atol=pos, rtol=0)


# ---- export and manifest ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["idm", "idm_recompute", "baseline"])
def test_export_passes_checker_and_manifest_is_the_contract(bundles, checkpoints, name):
    import onnx

    bundle = bundles[name]
    m = bundle.manifest
    cfg = Policy.from_checkpoint(checkpoints / ("baseline" if name == "baseline" else "idm")).cfg
    expected = {"encoder", "idm_encoder", "action_step"} | (
        {"decoder", "video_context", "video_frame"} if name == "idm" else
        {"decoder", "video_sequence"} if name == "idm_recompute" else set())
    assert set(bundle.stages) == expected
    for stage in bundle.stages:
        path = bundle.graph(stage)
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert graph_ops(model) <= TRT10_OPS, f"{stage}: {graph_ops(model) - TRT10_OPS}"
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET
        assert m["files"][path.name] == sha256_file(path)
        graph_in = [(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim)) for i in model.graph.input]
        assert graph_in == [(s.name, s.shape) for s in bundle.inputs(stage)]
        if m["parity"]["max_abs_diff"]:
            assert m["parity"]["max_abs_diff"][stage] < 1e-2  # absolute, on outputs up to ~100 (exact check below)
    c = m["control"]
    assert (c["horizon"], c["obs_hz"], c["dt"]) == (cfg.horizon, cfg.obs_hz, 1.0 / cfg.obs_hz)
    assert (c["video_steps"], c["action_steps"], c["relative_actions"]) == \
        (cfg.video_steps, cfg.action_steps, cfg.relative_actions)
    assert c["cameras"] == list(cfg.cameras) and c["instructions"] == list(cfg.instructions)
    assert m["tokenizer"]["image_size"] == 16 and m["tokenizer"]["latent_shape"] == list(cfg.latent_shape)
    assert {"torch", "onnx", "opset", "avdp_ros"} <= set(m["versions"])
    ref = Policy.from_checkpoint(checkpoints / ("baseline" if name == "baseline" else "idm"))
    mean, std = bundle.normalizer("action")
    np.testing.assert_array_equal(mean, ref.actor.action_norm.mean.numpy())
    np.testing.assert_array_equal(std, ref.actor.action_norm.std.numpy())
    if name != "baseline":
        np.testing.assert_array_equal(bundle.normalizer("video_state")[0], ref.video_state_norm.mean.numpy())


def test_export_tool(checkpoints, tmp_path):
    from avdp_ros.tools.export import main

    assert main([str(checkpoints / "baseline"), "--out", str(tmp_path / "b"), "--no-decoder", "--no-parity"]) == 0
    assert Bundle(tmp_path / "b").kind == "baseline"
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 1


# ---- numpy twins of the torch pre/post-processing ---------------------------------------------------


@pytest.mark.parametrize("h, w, size", [(32, 32, 16), (128, 128, 64), (37, 50, 16), (10, 12, 16), (16, 16, 16)])
def test_numpy_resize_matches_torch(h, w, size):
    img = np.random.default_rng(0).integers(0, 255, (2, h, w, 3), dtype=np.uint8)
    np.testing.assert_allclose(npops.images_to_float(img, size), to_float_images(img, size).numpy(), atol=1e-6)


def test_numpy_pose_and_grid_match_torch():
    rng = np.random.default_rng(0)
    for steps in range(1, 9):
        np.testing.assert_array_equal(npops.euler_grid(steps), torch.linspace(1.0, 0.0, steps + 1).numpy())
    pose = np.concatenate([rng.normal(size=3), rng.normal(size=4)]).astype(np.float32)
    np.testing.assert_allclose(npops.pose_to_state10(pose, 0.03), pose_to_state10(pose[None], np.array([0.03]))[0],
                               atol=1e-6)
    rel, state = torch.randn(6, 10), torch.randn(10)
    absolute = npops.actions_from_relative(rel.numpy(), state.numpy())
    np.testing.assert_allclose(absolute, rotation.actions_from_relative(rel, state).numpy(), atol=1e-6)
    np.testing.assert_allclose(npops.actions_to_pose8(absolute)[:, :7],
                               rotation.pose9_to_pose7(torch.from_numpy(absolute[:, :9])).numpy(), atol=1e-6)
    np.testing.assert_allclose(npops.actions_to_relative(absolute, state.numpy()),
                               rotation.actions_to_relative(torch.from_numpy(absolute), state).numpy(), atol=1e-6)
    poses = np.concatenate([rng.normal(size=(5, 3)), rng.normal(size=(5, 4))], axis=1).astype(np.float32)
    np.testing.assert_allclose(npops.pose7_to_pose9(poses), rotation.pose7_to_pose9(torch.from_numpy(poses)).numpy(),
                               atol=1e-6)


# ---- parity: per stage, video rollout, end to end -------------------------------------------------


@pytest.mark.parametrize("name", ["idm", "idm_recompute", "baseline", "idm_uwm", "idm_vpp", "idm_shared"])
def test_onnxruntime_matches_torch_per_stage(bundles, checkpoints, name):
    policy = Policy.from_checkpoint(checkpoints / {"idm_recompute": "idm"}.get(name, name))
    _, stages = build_stages(policy, bundles[name].video_mode or "kv")
    runner = OrtRunner(bundles[name], threads=1)
    g = torch.Generator().manual_seed(3)
    for stage, (module, inputs, outputs) in stages.items():
        args = example_inputs(inputs, policy.cfg, g)
        got = runner.run(stage, {s.name: a.numpy() for s, a in zip(inputs, args)})
        with torch.no_grad():
            ref = module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for spec, r in zip(outputs, ref):
            diff = _stage_diff(got[spec.name], r.numpy())
            assert diff <= STAGE_TOL, f"{stage}.{spec.name}: scaled max|diff| {diff:.2e}"


@pytest.mark.parametrize("name", ["idm", "idm_recompute"])
def test_video_rollout_matches_torch_kv_cache(bundles, checkpoints, name):
    """The padded-KV-cache (or recompute) rollout over onnxruntime = VideoModel.rollout (KV cache)."""
    policy = Policy.from_checkpoint(checkpoints / "idm")
    cfg = policy.cfg
    staged = StagedPolicy(PolicyMeta.from_bundle(bundles[name]), OrtRunner(bundles[name], threads=1))
    g = torch.Generator().manual_seed(5)
    context = torch.randn((1, cfg.context_frames, cfg.n_cameras, *cfg.latent_shape), generator=g)
    states = torch.randn((1, cfg.context_frames, 10), generator=g)
    noise = torch.randn((1, cfg.future_frames, cfg.n_cameras, *cfg.latent_shape), generator=g)
    instr = torch.tensor([1])
    ref_pred, ref_feats = policy.video.rollout(context, instr, policy.video_state_norm.normalize(states), noise=noise)
    mean, std = staged.meta.norms["video_state"]
    vstate = ((states.numpy() - mean) / std).astype(np.float32)
    rollout = staged._rollout_kv if name == "idm" else staged._rollout_recompute
    pred, feats = rollout(context.numpy(), instr.numpy(), vstate, noise.numpy())
    assert _stage_diff(pred, ref_pred.numpy()) <= STAGE_TOL
    assert _stage_diff(feats, ref_feats.numpy()) <= STAGE_TOL
    assert np.abs(ref_pred.numpy()).max() > 0.1  # not a trivially zero rollout


@pytest.mark.parametrize("name, backend, options", [
    ("idm", "onnxruntime", {"threads": 1}),
    ("idm_recompute", "onnxruntime", {"threads": 1}),
    ("baseline", "onnxruntime", {"threads": 1}),
    ("baseline_nostate", "onnxruntime", {"threads": 1}),
    ("baseline_crop", "onnxruntime", {"threads": 1}),
    ("idm_uwm", "onnxruntime", {"threads": 1}),
    ("idm_vpp", "onnxruntime", {"threads": 1}),
    ("idm_shared", "onnxruntime", {"threads": 1}),
    ("idm", "torch", {"staged": True}),
    ("idm_uwm", "torch", {"staged": True}),
    ("idm_vpp", "torch", {"staged": True}),
    ("baseline_nostate", "torch", {"staged": True}),
    ("idm", "torch", {"staged": True, "video_mode": "recompute"}),
])
def test_end_to_end_action_chunk_matches_torch(bundles, checkpoints, name, backend, options):
    kind = "baseline" if name.startswith("baseline") else "idm"
    ckpt = checkpoints / (name if name.startswith("baseline") or name in ("idm_uwm", "idm_vpp", "idm_shared") else kind)
    ref = Policy.from_checkpoint(ckpt)
    path = bundles[name].path if backend != "torch" else ckpt
    policy = load_policy(backend, path, "cpu", **options)
    assert (policy.kind, policy.obs_hz, policy.cfg.horizon) == (kind, ref.obs_hz, ref.cfg.horizon)
    noises = _noises(ref.cfg, 4)
    for seed, noise in enumerate(noises):  # 4 calls: the history fills and rolls as in a controller
        want = ref.infer(_obs(seed), noise=noise, return_frames=True)
        got = policy.infer(_obs(seed), noise=noise, return_frames=True)
        assert set(got["timings"]) == {"tokenizer_ms", "video_ms", "idm_ms", "total_ms"}
        assert got["actions"].dtype == np.float64 and got["actions"].shape == (ref.cfg.horizon, 8)
        _assert_actions_close(got["actions"], want["actions"])
        if kind == "idm":
            diff = np.abs(got["predicted_frames"].astype(int) - want["predicted_frames"]).max()
            assert got["predicted_frames"].shape == want["predicted_frames"].shape and diff <= 1
        else:
            assert "predicted_frames" not in got
    # real-time chunking: a prefix of committed actions is inpainted identically
    assert policy.supports_prefix
    prefix = want["actions"][:2]
    want = ref.infer(_obs(5), noise=noises[0], prefix=prefix)["actions"]
    got = policy.infer(_obs(5), noise=noises[0], prefix=prefix)["actions"]
    _assert_actions_close(got, want)
    _assert_actions_close(got[:2], prefix)
    with pytest.raises(ValueError, match=r"prefix: \(4, 8\) array, expected \(P, 8\) finite actions"):
        policy.infer(_obs(6), prefix=want[:4])
    # the chunk depends on the noise (the comparison above is not between constants)
    policy.reset()
    other = policy.infer(_obs(0), noise={k: v + 1.0 for k, v in noises[0].items()})["actions"]
    policy.reset()
    same = policy.infer(_obs(0), noise=noises[0])["actions"]
    assert not np.allclose(other, same, atol=1e-3)
    policy.reset()
    np.testing.assert_array_equal(policy.infer(_obs(0), noise=noises[0])["actions"], same)  # deterministic
    # temperature 0: the drawn action noise is zero, as in the torch policy
    policy.reset()
    ref.reset()
    policy.action_temperature = ref.action_temperature = 0.0
    video_only = {"video": noises[0]["video"], "future": noises[0]["future"]}
    _assert_actions_close(policy.infer(_obs(0), noise=video_only)["actions"],
                          ref.infer(_obs(0), noise=video_only)["actions"])
    if name == "idm_uwm":  # future_t 1: the future is pure noise and the rollout is skipped, in both
        policy.future_t = ref.future_t = 1.0
        _assert_actions_close(policy.infer(_obs(1), noise=noises[1])["actions"],
                              ref.infer(_obs(1), noise=noises[1])["actions"])


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cropped_camera_sees_only_its_region_of_interest(bundles, checkpoints, backend):
    path = checkpoints / "baseline_crop" if backend == "torch" else bundles["baseline_crop"].path
    manifest = json.loads((bundles["baseline_crop"].path / "manifest.json").read_text())
    assert manifest["tokenizer"]["crops"] == {"camera": list(CROP)}
    noise = _noises(preset("tiny"), 1)[0]

    def chunk(obs):
        policy = load_policy(backend, path, "cpu")
        return policy.infer(obs, noise=noise)["actions"]

    ref = chunk(_obs(0))
    outside, inside = _obs(0), _obs(0)
    outside["camera"] = outside["camera"].copy()
    outside["camera"][:8] = 255 - outside["camera"][:8]  # rows above the crop
    outside["camera"][:, 24:] = 0  # columns right of it
    inside["camera"] = inside["camera"].copy()
    inside["camera"][8:24, 4:24] = 255 - inside["camera"][8:24, 4:24]
    np.testing.assert_array_equal(chunk(outside), ref)
    assert np.abs(chunk(inside) - ref).max() > 1e-4
    # the uncropped twin (same weights) sees the change outside
    twin = load_policy("torch", checkpoints / "baseline", "cpu")
    twin_ref = twin.infer(_obs(0), noise=noise)["actions"]
    twin.reset()
    assert np.abs(twin.infer(outside, noise=noise)["actions"] - twin_ref).max() > 1e-4


def test_staged_policy_interface_and_observation_errors(bundles):
    policy = load_policy("onnxruntime", bundles["idm"].path, threads=1, seed=0)
    policy.observe(_obs(0))
    assert len(policy._frames) == policy.cfg.context_frames  # padded with the first frame
    policy.reset()
    assert len(policy._frames) == 0
    out = policy.infer(_obs(0))  # noise drawn from the seeded generator
    assert np.all(np.isfinite(out["actions"]))
    np.testing.assert_allclose(np.linalg.norm(out["actions"][:, 3:7], axis=1), 1.0, atol=1e-5)
    bad = _obs()
    bad["wrist"] = bad["wrist"].astype(np.float32)
    with pytest.raises(ValueError, match="'wrist'.*expected a uint8"):
        policy.infer(bad)
    bad = _obs()
    bad["ee_pose"][0] = np.nan
    with pytest.raises(ValueError, match="'ee_pose'.*7 finite"):
        policy.infer(bad)
    with pytest.raises(ValueError, match=r"noise\['action'\] of shape \(1, 3, 10\), expected \(1, 4, 10\)"):
        policy.infer(_obs(), noise={"action": np.zeros((1, 3, 10), np.float32)})


def test_onnxruntime_backend_runs_without_torch(bundles):
    """The Jetson claim: the onnxruntime backend needs numpy + onnxruntime, not torch."""
    code = (
        "import sys, numpy as np\n"
        "from avdp_ros.deploy import load_policy\n"
        f"p = load_policy('onnxruntime', {str(bundles['idm'].path)!r}, threads=1, seed=0)\n"
        "rng = np.random.default_rng(0)\n"
        "obs = {c: rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for c in p.cfg.cameras}\n"
        "obs.update(ee_pose=np.array([0.4, 0, 0.3, 1, 0, 0, 0.]), gripper=0.04)\n"
        "assert p.infer(obs, return_frames=True)['actions'].shape == (p.cfg.horizon, 8)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]


# ---- failure modes ---------------------------------------------------------------------------------


def _copy(bundle, tmp_path):
    return Bundle(shutil.copytree(bundle.path, tmp_path / "copy"))


def test_hash_mismatch_names_file_and_both_hashes(bundles, tmp_path):
    b = _copy(bundles["baseline"], tmp_path)
    graph = b.graph("action_step")
    expected = b.manifest["files"][graph.name]
    with open(graph, "ab") as f:
        f.write(b"\0")
    actual = sha256_file(graph)
    with pytest.raises(HashMismatchError, match=rf"action_step.onnx has SHA-256 {actual}, but manifest.json "
                                                rf"expects {expected}"):
        Bundle(b.path)
    with pytest.raises(HashMismatchError):
        load_policy("onnxruntime", b.path)
    graph.unlink()
    with pytest.raises(BundleError, match="action_step.onnx is listed in manifest.json but missing"):
        Bundle(b.path)


def test_bad_manifests_are_refused(bundles, tmp_path, checkpoints):
    b = _copy(bundles["baseline"], tmp_path)
    m = json.loads((b.path / "manifest.json").read_text())
    (b.path / "manifest.json").write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(BundleError, match="format 'avdp-bundle' v99, expected 'avdp-bundle' v1"):
        Bundle(b.path)
    (b.path / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle(b.path)
    with pytest.raises(BundleError, match="is a torch checkpoint; the onnxruntime backend runs an exported bundle"):
        load_policy("onnxruntime", checkpoints / "idm")
    with pytest.raises(BundleError, match="is an exported bundle; the torch backend loads the checkpoint"):
        load_policy("torch", bundles["idm"].path)


def test_input_shape_mismatch_names_tensor_expected_and_got(bundles, tmp_path):
    runner = OrtRunner(bundles["baseline"], threads=1)
    ctx_shape = bundles["baseline"].inputs("action_step")[2].shape
    feeds = {"a": np.zeros((1, 5, 10), np.float32), "t": np.ones(1, np.float32), "ctx": np.zeros(ctx_shape, np.float32)}
    with pytest.raises(ShapeMismatchError, match=r"stage 'action_step': input 'a' has shape \(1, 5, 10\), "
                                                 r"expected \(1, 4, 10\)"):
        runner.run("action_step", feeds)
    feeds["a"] = np.zeros((1, 4, 10), np.float64)
    with pytest.raises(ShapeMismatchError, match="input 'a' has dtype float64, expected float32"):
        runner.run("action_step", feeds)
    feeds["a"] = np.zeros((1, 4, 10), np.float32)
    del feeds["t"]
    with pytest.raises(ShapeMismatchError, match="input 't' missing"):
        runner.run("action_step", feeds)
    # a manifest that disagrees with its graph is refused at load
    b = _copy(bundles["baseline"], tmp_path)
    m = json.loads((b.path / "manifest.json").read_text())
    m["stages"]["action_step"]["inputs"][0]["shape"] = [1, 6, 10]
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShapeMismatchError, match=r"stage 'action_step' input 'a' has shape \(1, 4, 10\) in the "
                                                 r"graph but \(1, 6, 10\) in the manifest"):
        load_policy("onnxruntime", b.path)


def test_missing_execution_provider_is_named_and_falls_back_only_when_allowed(bundles):
    available = ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match=r"TensorrtExecutionProvider \(requested as 'tensorrt'\) is not "
                       r"available in this onnxruntime build; available: \['CPUExecutionProvider'\]"):
        resolve_providers(["tensorrt", "cpu"], available, allow_fallback=False)
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider.*falling back"):
        assert resolve_providers(["cuda", "cpu"], available, allow_fallback=True) == ["cpu"]
    with pytest.raises(ValueError, match=r"onnxruntime providers \['tpu'\]"):
        load_policy("onnxruntime", bundles["baseline"].path, providers="tpu")
    if PROVIDERS["tensorrt"] in ort.get_available_providers():
        pytest.skip("this onnxruntime build has the TensorRT EP: the missing-provider path cannot be hit for real")
    with pytest.raises(ProviderError, match=r"TensorrtExecutionProvider .* available: \["):
        load_policy("onnxruntime", bundles["baseline"].path, providers="tensorrt")
    with pytest.warns(RuntimeWarning, match="falling back"):
        policy = load_policy("onnxruntime", bundles["baseline"].path, providers="tensorrt", allow_fallback=True,
                             threads=1)
    assert policy.runner.providers == ["CPUExecutionProvider"]
    assert policy.infer(_obs())["actions"].shape == (policy.cfg.horizon, 8)


def test_engine_cache_is_keyed_and_refuses_or_rebuilds_other_targets(tmp_path):
    here = EngineTarget("NVIDIA H100 80GB HBM3", "10.13.0", "fp16", "9.0")
    other_gpu = EngineTarget("Orin (nvgpu)", "10.13.0", "fp16", "8.7")
    other_trt = EngineTarget("NVIDIA H100 80GB HBM3", "10.3.0", "fp16", "9.0")
    sha = "ab" * 32
    keys = {engine_key(t, sha) for t in (here, other_gpu, other_trt)} | {engine_key(here, "cd" * 32)}
    assert len(keys) == 4  # GPU, TensorRT version and graph all change the key

    def fake_engine(target):
        key = engine_key(target, sha)
        (tmp_path / f"video_frame.{key}.engine").write_bytes(b"engine")
        (tmp_path / f"video_frame.{key}.json").write_text(json.dumps(
            {"stage": "video_frame", "gpu": target.gpu, "trt_version": target.trt_version, "onnx_sha256": sha,
             "precision": target.precision}))
        return tmp_path / f"video_frame.{key}.engine"

    path, action = resolve_engine(tmp_path, "video_frame", sha, here, "refuse")
    assert action == "build"  # an empty cache: nothing to mismatch
    fake_engine(other_gpu)
    fake_engine(other_trt)
    with pytest.raises(EngineMismatchError, match=r"not for this NVIDIA H100 80GB HBM3 \(sm 9.0\) / TensorRT "
                                                  r"10.13.0 / fp16 / onnx abababababab; build one here") as err:
        resolve_engine(tmp_path, "video_frame", sha, here, "refuse")
    assert "Orin (nvgpu) / TensorRT 10.13.0" in str(err.value)
    assert "NVIDIA H100 80GB HBM3 / TensorRT 10.3.0" in str(err.value)
    assert resolve_engine(tmp_path, "video_frame", sha, here, "rebuild") == (path, "build")
    assert fake_engine(here) == path
    assert resolve_engine(tmp_path, "video_frame", sha, here, "refuse") == (path, "load")
    with pytest.raises(ValueError, match="on_mismatch 'ignore'"):
        resolve_engine(tmp_path, "video_frame", sha, here, "ignore")


def test_backend_arguments_are_validated(bundles, checkpoints, tmp_path):
    with pytest.raises(ValueError, match="backend 'onnx': expected one of torch, onnxruntime, tensorrt"):
        load_policy("onnx", checkpoints / "idm")
    with pytest.raises(TypeError, match=r"unknown options \['providers'\]"):
        load_policy("torch", checkpoints / "idm", providers="cuda")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy("onnxruntime", tmp_path / "nothing")
    with pytest.raises(ValueError, match="seed: the eager torch Policy draws noise from torch's global generator"):
        load_policy("torch", checkpoints / "idm", seed=0)
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        load_policy("torch", checkpoints / "idm", dtype="fp8")
    if CUDA_SKIP:
        with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device, got device 'cpu'"):
            load_policy("torch", checkpoints / "idm", "cpu", cuda_graphs=True)
        with pytest.raises(ValueError, match="dtype 'fp16' .* is for CUDA devices"):
            load_policy("torch", checkpoints / "idm", "cpu", dtype="fp16")
        with pytest.raises(ValueError, match="sees no CUDA device"):
            load_policy("torch", checkpoints / "idm", "cuda")
    with pytest.raises(ValueError, match="the tensorrt backend runs on a CUDA device, got device 'cpu'"):
        load_policy("tensorrt", bundles["idm"].path, "cpu")


def test_policy_node_loads_bundles(bundles, checkpoints):
    pytest.importorskip("rclpy", reason="rclpy is not installed (the node module imports it)")
    from avdp_ros.nodes.policy_node import load_policy as node_load

    assert node_load("onnxruntime", bundles["baseline"].path, "cpu", None, 2).action_steps == 2
    assert isinstance(node_load("torch", checkpoints / "idm", "cpu", None, None), Policy)
    with pytest.raises(FileNotFoundError, match="no manifest.json: the onnxruntime backend runs a bundle"):
        node_load("onnxruntime", checkpoints / "idm", "cpu", None, None)


# ---- GPU-only paths (skipped here with the reason) ---------------------------------------------------


@pytest.mark.skipif(TRT_SKIP is not None, reason=TRT_SKIP or "")
def test_tensorrt_engines_build_cache_and_match_torch(bundles, checkpoints, tmp_path):
    engines = tmp_path / "engines"
    policy = load_policy("tensorrt", bundles["idm"].path, "cuda", engine_dir=engines, precision="fp16")
    ref = Policy.from_checkpoint(checkpoints / "idm")
    for seed, noise in enumerate(_noises(ref.cfg, 3)):
        want = ref.infer(_obs(seed), noise=noise)["actions"]
        _assert_actions_close(policy.infer(_obs(seed), noise=noise)["actions"], want, pos=1e-2, quat=2e-2)
    built = sorted(engines.glob("*.engine"))
    assert len(built) == len(bundles["idm"].stages) and (engines / "timing.cache").is_file()
    again = load_policy("tensorrt", bundles["idm"].path, "cuda", engine_dir=engines, build_missing=False)
    assert sorted(engines.glob("*.engine")) == built and again.kind == "idm"


@pytest.mark.skipif(CUDA_SKIP is not None, reason=CUDA_SKIP or "")
@pytest.mark.parametrize("options, pos, quat", [({"cuda_graphs": True}, 1e-3, 1e-3),
                                                ({"cuda_graphs": True, "dtype": "fp16"}, 1e-2, 2e-2),
                                                ({"dtype": "bf16"}, 3e-2, 5e-2)])
def test_torch_cuda_graphs_and_autocast_match_eager(checkpoints, options, pos, quat):
    ref = Policy.from_checkpoint(checkpoints / "idm")
    policy = load_policy("torch", checkpoints / "idm", "cuda", **options)
    for seed, noise in enumerate(_noises(ref.cfg, 3)):
        want = ref.infer(_obs(seed), noise=noise)["actions"]
        _assert_actions_close(policy.infer(_obs(seed), noise=noise)["actions"], want, pos=pos, quat=quat)


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="this onnxruntime build has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
def test_onnxruntime_cuda_provider_matches_torch(bundles, checkpoints):
    ref = Policy.from_checkpoint(checkpoints / "idm")
    policy = load_policy("onnxruntime", bundles["idm"].path, "cuda")
    noise = _noises(ref.cfg, 1)[0]
    _assert_actions_close(policy.infer(_obs(), noise=noise)["actions"], ref.infer(_obs(), noise=noise)["actions"],
                          pos=1e-3, quat=1e-3)
