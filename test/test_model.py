"""Fast tests of the model core (tiny preset, CPU): configs, flow helpers, rotations, normaliser,
video model (causality, KV cache, sampling) and the action policies (IDM, action-only baseline)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from avdp_ros import geometry
from avdp_ros.model import flow, rotation
from avdp_ros.model.checkpoint import load_checkpoint, save_checkpoint
from avdp_ros.model.config import PRESETS, IDMConfig, PolicyConfig, VideoConfig, idm_head, preset
from avdp_ros.model.idm import ActionBatch, ActionOnlyPolicy, InverseDynamics, Normalizer
from avdp_ros.model.video import VideoModel, block_causal_mask


@pytest.fixture(autouse=True)
def _one_thread():
    # on a shared 2-core machine, intra-op threads spin against each other (tens of times slower)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cfg() -> PolicyConfig:
    return preset("tiny")


def _latents(cfg: PolicyConfig, batch: int, frames: int) -> torch.Tensor:
    return torch.randn(batch, frames, cfg.n_cameras, *cfg.latent_shape)


def _scramble(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter: adaLN-zero makes a fresh model's output identically 0, which
    would let causality / cache tests pass vacuously."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _action_batch(cfg: PolicyConfig, batch: int = 4) -> ActionBatch:
    return ActionBatch(
        context=_latents(cfg, batch, cfg.context_frames),
        future=_latents(cfg, batch, cfg.future_frames),
        state=torch.randn(batch, 10),
        instr=torch.randint(0, len(cfg.instructions), (batch,)),
        actions=torch.randn(batch, cfg.horizon, 10),
        video_features=torch.randn(batch, cfg.context_frames + cfg.future_frames, cfg.video.n_embd),
    )


# ---- config ---------------------------------------------------------------------------------

def test_config_round_trip_through_json():
    for name in PRESETS:
        c = preset(name)
        back = PolicyConfig.from_dict(json.loads(json.dumps(c.to_dict())))
        assert back == c
    assert preset("tiny") is not PRESETS["tiny"]


@pytest.mark.parametrize("make, message", [
    (lambda: VideoConfig(n_embd=100, n_head=3), "n_embd 100 not divisible by n_head 3"),
    (lambda: IDMConfig(n_embd=30, n_head=4), "n_embd 30 not divisible by n_head 4"),
    (lambda: VideoConfig(n_layer=0), "n_layer = 0"),
    (lambda: PolicyConfig(latent_shape=(4, 6, 6), video=VideoConfig(patch_size=4)), "does not divide"),
    (lambda: PolicyConfig(instructions=("push",)), "must start with '<unk>'"),
    (lambda: PolicyConfig(context_frames=6, future_frames=4), "exceeds video.max_frames"),
    (lambda: PolicyConfig(idm=IDMConfig(past_frames=5)), "exceeds context_frames"),
    (lambda: PolicyConfig(idm=IDMConfig(video_feature_dim=7)), "video_feature_dim 7"),
    (lambda: PolicyConfig(tokenizer={"image_size": 64, "latent_channels": 4, "block_out_channels": [32, 64]}),
     r"gives \(4, 32, 32\)"),
    (lambda: PolicyConfig.from_dict({**PolicyConfig().to_dict(), "bogus": 1}), "unknown keys"),
    (lambda: preset("huge"), "unknown preset 'huge'"),
])
def test_config_validation_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_instruction_index_maps_unknown_to_zero(cfg):
    assert cfg.instruction_index(cfg.instructions[2]) == 2
    assert cfg.instruction_index("dance") == 0


# ---- flow -----------------------------------------------------------------------------------

def test_flow_interpolation_and_target():
    x0, eps = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(flow.interpolate(x0, eps, torch.zeros(3)), x0)
    assert torch.equal(flow.interpolate(x0, eps, torch.ones(3)), eps)
    t, dt = torch.full((3,), 0.3), 1e-3
    finite = (flow.interpolate(x0, eps, t + dt) - flow.interpolate(x0, eps, t)) / dt
    torch.testing.assert_close(finite, flow.velocity_target(x0, eps), atol=1e-2, rtol=0)
    # per-frame times broadcast over trailing dims
    x0f, epsf, tf = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.rand(2, 3)
    torch.testing.assert_close(flow.interpolate(x0f, epsf, tf), (1 - tf[..., None]) * x0f + tf[..., None] * epsf)


def test_sample_t_range_and_generator():
    for logit_normal in (True, False):
        t = flow.sample_t((1000,), torch.Generator().manual_seed(0), logit_normal=logit_normal)
        assert t.shape == (1000,) and (t > 0).all() and (t < 1).all()
        again = flow.sample_t((1000,), torch.Generator().manual_seed(0), logit_normal=logit_normal)
        assert torch.equal(t, again)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_euler_sample_follows_straight_paths(steps):
    # the exact velocity field of a single data point x0 is (x - x0) / t: Euler is exact on it
    x0, noise = torch.randn(2, 6), torch.randn(2, 6)
    out = flow.euler_sample(lambda x, t: (x - x0) / t[:, None], noise, steps)
    torch.testing.assert_close(out, x0)
    with pytest.raises(ValueError, match="steps = 0"):
        flow.euler_sample(lambda x, t: x, noise, 0)


# ---- rotation -------------------------------------------------------------------------------

def _random_quats(n: int) -> torch.Tensor:
    q = torch.nn.functional.normalize(torch.randn(n, 4, dtype=torch.float64), dim=-1)
    return torch.where(q[:, 3:] < 0, -q, q)


def test_rotation_round_trips():
    q = _random_quats(500)
    # include the hard cases: identity and 180-degree turns about each axis
    q = torch.cat([q, torch.tensor([[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.0]], dtype=q.dtype)])
    m = rotation.quat_to_matrix(q)
    torch.testing.assert_close(m @ m.transpose(-1, -2), torch.eye(3, dtype=q.dtype).expand_as(m))
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(len(q), dtype=q.dtype))
    np.testing.assert_allclose(m.numpy(), geometry.quat_to_matrix(q.numpy()), atol=1e-12)
    d6 = rotation.quat_to_rot6d(q)
    assert d6.shape == (len(q), 6)
    back = rotation.rot6d_to_quat(d6)
    # unique up to sign; w >= 0 leaves only w == 0 ambiguous, so compare as rotations
    assert (torch.abs((back * q).sum(-1)) > 1 - 1e-9).all()
    torch.testing.assert_close(rotation.matrix_to_quat(m)[:-4], q[:-4])


def test_rot6d_gram_schmidt_projects_to_a_rotation():
    q = _random_quats(100)
    d6 = rotation.quat_to_rot6d(q)
    noisy = 2.5 * d6 + 0.05 * torch.randn_like(d6)  # scaled, slightly non-orthogonal network output
    m = rotation.rot6d_to_matrix(noisy)
    torch.testing.assert_close(m @ m.transpose(-1, -2), torch.eye(3, dtype=q.dtype).expand_as(m))
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(100, dtype=q.dtype))
    torch.testing.assert_close(rotation.rot6d_to_matrix(d6), rotation.quat_to_matrix(q))


def test_pose7_pose9_round_trip():
    pose = torch.cat([torch.randn(20, 3, dtype=torch.float64), _random_quats(20)], dim=-1)
    p9 = rotation.pose7_to_pose9(pose)
    assert p9.shape == (20, 9)
    torch.testing.assert_close(rotation.pose9_to_pose7(p9), pose)


def test_relative_actions_round_trip_and_meaning():
    def pose10(n):
        p9 = rotation.pose7_to_pose9(torch.cat([torch.randn(n, 3, dtype=torch.float64), _random_quats(n)], -1))
        return torch.cat([p9, torch.rand(n, 1, dtype=torch.float64) * 0.08], dim=-1)

    state = pose10(5)  # (5, 10)
    actions = pose10(5 * 4).view(5, 4, 10)  # (5, H=4, 10)
    rel = rotation.actions_to_relative(actions, state)
    torch.testing.assert_close(rotation.actions_from_relative(rel, state), actions)
    # meaning: position offsets, rotation R_s^T R_a, width untouched
    torch.testing.assert_close(rel[..., :3], actions[..., :3] - state[:, None, :3])
    r_s = rotation.rot6d_to_matrix(state[:, 3:9])
    torch.testing.assert_close(r_s[:, None] @ rotation.rot6d_to_matrix(rel[..., 3:9]),
                               rotation.rot6d_to_matrix(actions[..., 3:9]))
    torch.testing.assert_close(rel[..., 9], actions[..., 9])
    # holding the current pose is the identity motion
    hold = rotation.actions_to_relative(state[:, None, :].expand(5, 4, 10), state)
    torch.testing.assert_close(hold[..., :3], torch.zeros(5, 4, 3, dtype=torch.float64))
    torch.testing.assert_close(rotation.rot6d_to_matrix(hold[..., 3:9]),
                               torch.eye(3, dtype=torch.float64).expand(5, 4, 3, 3))


# ---- normaliser -----------------------------------------------------------------------------

def test_normalizer_round_trip_and_checkpoint(tmp_path):
    data = torch.randn(200, 10) * torch.linspace(0.1, 3, 10) + torch.arange(10.0)
    data[:, 4] = 0.7  # a constant dimension (e.g. fixed orientation) must stay finite
    norm = Normalizer(10).fit(data)
    z = norm.normalize(data)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z[:, :4].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :4].std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.unnormalize(z), data, atol=1e-5, rtol=1e-5)
    save_checkpoint(tmp_path / "ckpt", "test", {"norm": norm}, {"dim": 10})
    states, _ = load_checkpoint(tmp_path / "ckpt", expected_kind="test")
    loaded = Normalizer(10)
    loaded.load_state_dict(states["norm"])
    assert torch.equal(loaded.normalize(data), z)
    with pytest.raises(ValueError, match="no rows"):  # NaN statistics would poison every later step
        Normalizer(10).fit(torch.zeros(0, 10))


# ---- video model ----------------------------------------------------------------------------

def test_block_causal_mask():
    m = block_causal_mask(2, 1, 3)  # query frames 1, 2 over key frames 0..2, 3 tokens each
    assert m.shape == (6, 9)
    assert m[:3, :6].all() and not m[:3, 6:].any() and m[3:].all()


def test_video_shapes(cfg):
    model = VideoModel(cfg)
    B, Fr = 2, cfg.video.max_frames
    lat, instr = _latents(cfg, B, Fr), torch.tensor([1, 2])
    assert model(lat, torch.rand(B, Fr), instr).shape == lat.shape
    assert model.features(lat, instr, torch.randn(B, 2, 10)).shape == (B, Fr, cfg.video.n_embd)
    loss, logs = model.loss(lat, instr, torch.randn(B, Fr, 10))
    assert loss.shape == () and set(logs) == {"video_loss", "video_t_mean"}
    pred, feats = model.rollout(lat[:, :cfg.context_frames], instr)
    assert pred.shape == (B, cfg.future_frames, cfg.n_cameras, *cfg.latent_shape)
    assert feats.shape == (B, cfg.context_frames + cfg.future_frames, cfg.video.n_embd)
    with pytest.raises(ValueError, match="exceed video.max_frames"):
        model.rollout(lat[:, :cfg.context_frames], instr, k=cfg.video.max_frames)
    with pytest.raises(ValueError, match="expected"):
        model(lat[:, :, :1], torch.rand(B, Fr), instr)


def test_video_is_block_causal(cfg):
    model = _scramble(VideoModel(cfg)).eval()
    B, Fr = 2, cfg.video.max_frames
    lat, t, instr, state = _latents(cfg, B, Fr), torch.rand(B, Fr), torch.tensor([0, 1]), torch.randn(B, Fr, 10)
    out = model(lat, t, instr, state)
    for f in range(Fr - 1):
        lat2, t2, state2 = lat.clone(), t.clone(), state.clone()
        lat2[:, f + 1:] += torch.randn_like(lat2[:, f + 1:])
        t2[:, f + 1:] = torch.rand_like(t2[:, f + 1:])
        state2[:, f + 1:] += 1.0
        out2 = model(lat2, t2, instr, state2)
        torch.testing.assert_close(out2[:, :f + 1], out[:, :f + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(out2[:, f + 1:], out[:, f + 1:])


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_kv_cache_rollout_equals_recomputation(cfg, steps):
    model = _scramble(VideoModel(cfg)).eval()
    B = 2
    ctx, instr, state = _latents(cfg, B, cfg.context_frames), torch.tensor([1, 2]), torch.randn(B, 1, 10)
    noise = torch.randn(B, cfg.future_frames, cfg.n_cameras, *cfg.latent_shape)
    pred, feats = model.rollout(ctx, instr, state, steps=steps, noise=noise, cache=True)
    ref_pred, ref_feats = model.rollout(ctx, instr, state, steps=steps, noise=noise, cache=False)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=0)
    # the features of the predicted frames are those of a clean pass over context + prediction
    full = torch.cat([ctx, pred], dim=1)
    torch.testing.assert_close(feats, model.features(full, instr, state), atol=1e-5, rtol=0)


def test_video_rollout_noise_determinism(cfg):
    model = _scramble(VideoModel(cfg)).eval()
    ctx, instr = _latents(cfg, 2, cfg.context_frames), torch.tensor([1, 2])
    noise = torch.randn(2, cfg.future_frames, cfg.n_cameras, *cfg.latent_shape)
    a, _ = model.rollout(ctx, instr, noise=noise)
    b, _ = model.rollout(ctx, instr, noise=noise.clone())
    c, _ = model.rollout(ctx, instr, noise=torch.randn_like(noise))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def _synthetic_clips(cfg: PolicyConfig, batch: int, frames: int) -> torch.Tensor:
    """Smooth travelling waves with a random amplitude per sample, camera and channel."""
    C, h, w = cfg.latent_shape
    amp = torch.randn(batch, 1, cfg.n_cameras, C, 1, 1)
    phase = 0.5 * torch.arange(frames).view(1, frames, 1, 1, 1, 1)
    ys, xs = torch.linspace(0, 3, h).view(h, 1), torch.linspace(0, 3, w).view(1, w)
    return (amp * torch.sin(xs + ys + phase)).contiguous()  # (B, F, cams, C, h, w)


def test_context_frames_are_clean_or_slightly_noised_and_carry_no_loss(cfg):
    """Diffusion forcing's noise levels: a random prefix of context frames (never the whole clip)
    is clean, or with video.context_noise at most that noisy; every other frame draws its own
    level; context frames carry no loss whatever their level."""
    B, Fr = 256, cfg.video.max_frames
    g = torch.Generator().manual_seed(0)
    split = torch.randint(1, Fr, (B, 1), generator=g)
    in_prefix = torch.arange(Fr)[None, :] < split
    for noise in (0.0, 0.2):
        c = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, context_noise=noise, clean_prefix_prob=0.5))
        t, context = VideoModel(c).noise_levels(in_prefix, split, g)
        assert context.any() and not context.all(dim=1).any() and not (context & ~in_prefix).any()
        assert (t[context] <= noise).all() and (t[context] > 0).any() == (noise > 0)
        assert (t[~context] > 0).all() and t[~context].max() > 0.9
    with pytest.raises(ValueError, match="context_noise = 1.5"):
        dataclasses.replace(cfg.video, context_noise=1.5)
    c = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, context_noise=0.2))
    model = _scramble(VideoModel(c))
    lat, instr = _synthetic_clips(c, 2, Fr), torch.tensor([1, 2])
    t = torch.full((2, Fr), 0.5)
    t[:, 0] = 0.0  # a given t marks context frames with 0
    noise = torch.randn(lat.shape, generator=g)
    other = noise.clone()
    other[:, 0] = torch.randn(other[:, 0].shape, generator=g)  # moves frame 0's target only (x_t = latents)
    with torch.no_grad():
        assert model.loss(lat, instr, t=t, noise=noise)[0] == model.loss(lat, instr, t=t, noise=other)[0]


def test_rollout_loss_learns_the_true_frames_after_its_own_rollout(cfg):
    """video.rollout_prob: the model rolls out j frames after the true context itself; they become
    context (no loss, no gradient into the rollout), and the true frames after them are the targets.
    Fitting it lowers the error of the model's own multi-frame rollout."""
    Fc, K = cfg.context_frames, cfg.future_frames
    c = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, rollout_prob=0.5))
    with pytest.raises(ValueError, match="rollout_prob = -0.1"):
        dataclasses.replace(cfg.video, rollout_prob=-0.1)
    model = VideoModel(c)
    B = 4
    lat, instr, state = _synthetic_clips(c, B, Fc + K), torch.tensor([1, 2, 1, 2]), torch.randn(B, Fc + K, 10)
    g = torch.Generator().manual_seed(3)
    loss, logs = model.rollout_loss(lat, instr, state, generator=g)
    assert torch.isfinite(loss) and 1 <= logs["rollout_frames"] <= K - 1
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="expected at least 2 more"):
        model.rollout_loss(lat[:, :Fc + 1], instr, state[:, :Fc + 1])

    def rollout_error() -> float:
        noise = torch.randn((B, K) + lat.shape[2:], generator=torch.Generator().manual_seed(9))
        pred, _ = model.rollout(lat[:, :Fc], instr, state[:, :Fc], k=K, noise=noise)
        return (pred - lat[:, Fc:]).pow(2).mean().item()

    before = rollout_error()
    _fit(model, lambda: model.rollout_loss(lat, instr, state, generator=g), 40)
    assert rollout_error() < 0.7 * before


def _fit(model: torch.nn.Module, loss_of, steps: int, lr: float = 3e-3) -> None:
    """`steps` Adam steps on `loss_of()`, a (loss, logs) pair."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = loss_of()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_video_loss_decreases(cfg):
    model = VideoModel(cfg)
    B, Fr = 4, cfg.video.max_frames
    lat, instr, state = _synthetic_clips(cfg, B, Fr), torch.tensor([1, 2, 1, 2]), torch.randn(B, Fr, 10)
    g = torch.Generator().manual_seed(1)
    t_eval, noise_eval = torch.rand(B, Fr, generator=g), torch.randn(lat.shape, generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            return model.loss(lat, instr, state, t=t_eval, noise=noise_eval)[0].item()

    before = eval_loss()
    _fit(model, lambda: model.loss(lat, instr, state, generator=g), 50)
    after = eval_loss()
    assert after < 0.7 * before


# ---- action policies ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [InverseDynamics, ActionOnlyPolicy])
def test_policy_shapes_and_determinism(cfg, cls):
    policy = _scramble(cls(cfg)).eval()
    batch = _action_batch(cfg)
    loss, logs = policy.loss(batch)
    assert loss.shape == () and set(logs) == {"action_loss"}
    assert policy.encode(batch).shape[:1] == (4,) and policy.encode(batch).shape[2] == cfg.idm.n_embd
    noise = torch.randn(4, cfg.horizon, 10)
    a = policy.sample(batch, steps=2, noise=noise)
    assert a.shape == (4, cfg.horizon, 10)
    assert torch.equal(a, policy.sample(batch, steps=2, noise=noise.clone()))
    assert not torch.allclose(a, policy.sample(batch, steps=2, noise=torch.randn_like(noise)))
    assert policy.sample(batch).shape == (4, cfg.horizon, 10)  # default steps, drawn noise


def test_inverse_dynamics_uses_future_and_baseline_does_not(cfg):
    batch = _action_batch(cfg)
    other = ActionBatch(**{**batch.__dict__, "future": torch.randn_like(batch.future)})
    noise = torch.randn(4, cfg.horizon, 10)
    idm, base = _scramble(InverseDynamics(cfg)).eval(), _scramble(ActionOnlyPolicy(cfg)).eval()
    assert not torch.allclose(idm.sample(batch, 2, noise), idm.sample(other, 2, noise))
    assert torch.equal(base.sample(batch, 2, noise), base.sample(other, 2, noise))
    with pytest.raises(ValueError, match="future"):
        idm.sample(ActionBatch(**{**batch.__dict__, "future": None}), 2, noise)
    with pytest.raises(ValueError, match="video_features is required"):
        idm.sample(ActionBatch(**{**batch.__dict__, "video_features": None}), 2, noise)


@pytest.mark.parametrize("cls", [InverseDynamics, ActionOnlyPolicy])
def test_use_state_false_ignores_the_proprio_state(cfg, cls):
    """idm.use_state=False: the chunk depends on the frames only (the state may still anchor
    relative actions outside the network); with the default the state changes the chunk."""
    batch = _action_batch(cfg)
    other = ActionBatch(**{**batch.__dict__, "state": torch.randn_like(batch.state)})
    noise = torch.randn(4, cfg.horizon, 10)
    with_state = _scramble(cls(cfg)).eval()
    assert not torch.allclose(with_state.sample(batch, 2, noise), with_state.sample(other, 2, noise))
    blind = _scramble(cls(dataclasses.replace(cfg, idm=dataclasses.replace(cfg.idm, use_state=False)))).eval()
    assert blind.encoder.state_proj is None
    assert torch.equal(blind.sample(batch, 2, noise), blind.sample(other, 2, noise))


def test_no_action_gradient_into_video_model(cfg):
    video, idm = _scramble(VideoModel(cfg)), InverseDynamics(cfg)
    batch = _action_batch(cfg)
    clip = torch.cat([batch.context, batch.future], dim=1)
    batch.video_features = video.features(clip, batch.instr)  # built with grad enabled
    loss, _ = idm.loss(batch)
    loss.backward()
    assert all(p.grad is None for p in video.parameters())
    assert idm.encoder.feature_proj.weight.grad is not None


@pytest.mark.parametrize("cls", [InverseDynamics, ActionOnlyPolicy])
def test_policy_loss_decreases(cfg, cls):
    policy = cls(cfg)
    batch = _action_batch(cfg, batch=8)
    # learnable: actions are a fixed function of state
    batch.actions = torch.tanh(batch.state[:, None, :] + torch.linspace(0, 1, cfg.horizon)[None, :, None])
    g = torch.Generator().manual_seed(2)
    t_eval, noise_eval = torch.rand(8, generator=g), torch.randn(batch.actions.shape, generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            return policy.loss(batch, t=t_eval, noise=noise_eval)[0].item()

    before = eval_loss()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(50):
        loss, _ = policy.loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before


def test_policy_checkpoint_round_trip(cfg, tmp_path):
    idm = _scramble(InverseDynamics(cfg)).eval()
    idm.action_norm.fit(torch.randn(50, 10) * 3 + 1)
    save_checkpoint(tmp_path / "idm", "idm", {"idm": idm}, cfg.to_dict())
    states, meta = load_checkpoint(tmp_path / "idm", expected_kind="idm")
    loaded = InverseDynamics(PolicyConfig.from_dict(meta["config"])).eval()
    loaded.load_state_dict(states["idm"])
    batch, noise = _action_batch(cfg), torch.randn(4, cfg.horizon, 10)
    assert torch.equal(loaded.sample(batch, 2, noise), idm.sample(batch, 2, noise))
    assert torch.equal(loaded.action_norm.std, idm.action_norm.std)


# ---- the UWM head: independent noise levels for the future and the action chunk ------------------

def _uwm(cfg: PolicyConfig, **idm) -> InverseDynamics:
    c = idm_head(cfg, "uwm")
    return _scramble(InverseDynamics(dataclasses.replace(c, idm=dataclasses.replace(c.idm, **idm))))


def test_idm_heads_are_presets_the_config_validates(cfg):
    assert idm_head(cfg, "uwm").idm.future_noise == "independent" and idm_head(cfg, "uwm").idm.video_feature_dim == 0
    assert idm_head(cfg, "teacher").idm == cfg.idm
    with pytest.raises(ValueError, match="unknown IDM head 'seer'"):
        idm_head(cfg, "seer")
    with pytest.raises(ValueError, match="future_noise = 'sometimes'"):
        IDMConfig(future_noise="sometimes")
    with pytest.raises(ValueError, match=r"future_t = 1.5: expected in \[0, 1\]"):
        IDMConfig(future_t=1.5)
    assert PolicyConfig.from_dict(json.loads(json.dumps(idm_head(cfg, "uwm").to_dict()))) == idm_head(cfg, "uwm")


def test_uwm_head_reads_its_future_at_the_flow_time_it_is_told(cfg):
    idm = _uwm(cfg).eval()
    batch = dataclasses.replace(_action_batch(cfg), video_features=None)
    noise = torch.randn(4, cfg.horizon, 10)
    with pytest.raises(ValueError, match="future_t is required"):
        idm.sample(batch, 2, noise)
    at = {t: dataclasses.replace(batch, future_t=torch.full((4,), t)) for t in (0.0, 1.0)}
    a0, a1 = idm.sample(at[0.0], 2, noise), idm.sample(at[1.0], 2, noise)
    assert a0.shape == (4, cfg.horizon, 10) and not torch.allclose(a0, a1)  # the level is an input
    other = dataclasses.replace(at[0.0], future=torch.randn_like(batch.future))
    assert not torch.allclose(a0, idm.sample(other, 2, noise))  # and so is the future
    # noise_future: (1 - t) future + t eps, and the level it records
    eps = torch.randn_like(batch.future)
    moved = idm.noise_future(batch, torch.tensor([0.0, 0.25, 0.5, 1.0]), eps)
    assert torch.equal(moved.future[0], batch.future[0]) and torch.equal(moved.future[3], eps[3])
    assert torch.allclose(moved.future[1], 0.75 * batch.future[1] + 0.25 * eps[1])
    assert torch.equal(moved.future_t, torch.tensor([0.0, 0.25, 0.5, 1.0]))


def test_uwm_training_noises_the_future_and_drops_the_ones_that_do_not_show_the_labels(cfg):
    """In training the future gets its own flow time: pure noise for every window with
    future_drop 1, and for relabelled windows (future_valid False) whatever future_drop is; so
    there the loss cannot depend on the frames given."""
    batch = dataclasses.replace(_action_batch(cfg), video_features=None)
    other = dataclasses.replace(batch, future=torch.randn_like(batch.future))

    def loss(model, b):
        return model.loss(b, generator=torch.Generator().manual_seed(7))[0].item()

    dropped = _uwm(cfg, future_drop=1.0)
    assert loss(dropped, batch) == loss(dropped, other)
    kept = _uwm(cfg, future_drop=0.0)
    assert loss(kept, batch) != loss(kept, other)
    invalid = torch.zeros(4, dtype=torch.bool)
    assert loss(kept, dataclasses.replace(batch, future_valid=invalid)) == \
        loss(kept, dataclasses.replace(other, future_valid=invalid))
    # the teacher head reads the future as given
    teacher = _scramble(InverseDynamics(cfg))
    assert teacher.encoder.future_t_embed is None and not teacher.noised_future


# ---- the VPP head: pooled video-model tokens of one pass over pure-noise future slots -------------

def test_video_tokens_are_one_causal_pass_with_pure_noise_slots(cfg):
    video = _scramble(VideoModel(cfg)).eval()
    context = _latents(cfg, 2, cfg.context_frames)
    noise = _latents(cfg, 2, cfg.future_frames)
    instr = torch.tensor([1, 2])
    tokens = video.tokens(context, instr, None, noise)
    T = cfg.n_cameras * (cfg.latent_shape[1] // cfg.video.patch_size) ** 2
    assert tokens.shape == (2, (cfg.context_frames + cfg.future_frames) * T, cfg.video.n_embd)
    # the context's tokens are the clean pass's (block-causal: the slots after them change nothing)
    t = torch.cat([torch.zeros(2, cfg.context_frames), torch.ones(2, cfg.future_frames)], dim=1)
    hidden, _ = video._backbone(torch.cat([context, noise], 1), video._cond(t, instr, None, None), 0, None)
    assert torch.allclose(tokens, hidden.flatten(1, 2), atol=1e-6)
    other = video.tokens(context, instr, None, torch.randn_like(noise))
    assert torch.allclose(tokens[:, :cfg.context_frames * T], other[:, :cfg.context_frames * T], atol=1e-6)
    assert not torch.allclose(tokens[:, cfg.context_frames * T:], other[:, cfg.context_frames * T:])


def test_vpp_head_reads_pooled_tokens_not_frames_and_trains_no_video_weight(cfg):
    c = idm_head(cfg, "vpp")
    assert c.idm.future_input == "tokens" and c.idm.video_feature_dim == 0
    with pytest.raises(ValueError, match="future_input 'tokens' reads no future frames"):
        dataclasses.replace(c.idm, future_noise="independent")
    video, idm = _scramble(VideoModel(c)), _scramble(InverseDynamics(c))
    batch = dataclasses.replace(_action_batch(c), video_features=None, future=None)
    with pytest.raises(ValueError, match="video_tokens is required"):
        idm.loss(batch)
    batch.video_tokens = video.tokens(batch.context, batch.instr, None, _latents(c, 4, c.future_frames))
    loss, _ = idm.loss(batch)
    loss.backward()
    assert all(p.grad is None for p in video.parameters())  # two-stage: the video model stays frozen
    assert idm.encoder.token_pool.queries.grad is not None
    assert idm.encoder.pos_frame.shape[0] == c.idm.past_frames  # no future frames
    noise = torch.randn(4, c.horizon, 10)
    idm.eval()
    with torch.no_grad():
        a = idm.sample(batch, 2, noise)
        other = dataclasses.replace(batch, video_tokens=torch.randn_like(batch.video_tokens))
        assert a.shape == (4, c.horizon, 10) and not torch.allclose(a, idm.sample(other, 2, noise))


def test_shared_head_trains_the_video_model_through_its_tokens(cfg):
    """--head shared (Seer / UVA style): the VPP input, but the action loss reaches the video model
    (joint training); only a tokens head can be joint."""
    c = idm_head(cfg, "shared")
    assert c.idm.future_input == "tokens" and c.idm.video_train == "joint" and c.idm.video_loss_weight > 0
    with pytest.raises(ValueError, match="video_train 'joint' .* future_input must be 'tokens'"):
        dataclasses.replace(idm_head(cfg, "uwm").idm, video_train="joint")
    with pytest.raises(ValueError, match="video_train = 'both'"):
        dataclasses.replace(c.idm, video_train="both")
    with pytest.raises(ValueError, match="video_loss_weight = -1"):
        dataclasses.replace(c.idm, video_loss_weight=-1)
    video, idm = _scramble(VideoModel(c)), _scramble(InverseDynamics(c))
    batch = dataclasses.replace(_action_batch(c), video_features=None, future=None)
    batch.video_tokens = video.tokens(batch.context, batch.instr, None, _latents(c, 4, c.future_frames))
    idm.loss(batch)[0].backward()
    grads = [p.grad for p in video.blocks.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
