"""The policy cut into static-shape stages: what the exporter turns into ONNX graphs and what the
torch staged runner (CUDA graphs) runs.

A stage is an `nn.Module` whose `forward` takes and returns plain tensors of fixed shapes at
batch 1 (`spec()` lists them). Sampling loops stay outside (`runtime.StagedPolicy`), so one
graph per network evaluation, with the same control flow as `Policy.infer`:

    encoder        images (cams, 3, S, S) in [0, 1]            -> latents (cams, C, h, w)
    decoder        latents (K*cams, C, h, w)                   -> images (K*cams, 3, S, S)   [idm]
    video_context  context, instr, state (normalised)          -> past_k, past_v, features  [idm]
    video_frame    x, t, instr, frame, past_k, past_v, past_bias -> velocity, k, v, feature  [idm, kv mode]
    video_sequence frames, t, instr, state                     -> velocity, features         [idm, recompute mode]
    video_tokens   context, instr, state, noise                -> tokens                     [idm, future_input tokens]
    idm_encoder    frames[, state (normalised)], instr[, video_features][, future_t][, video_tokens] -> ctx
    action_step    a, t, ctx                                   -> velocity

KV cache with static shapes: `video_frame` takes the cache padded to its largest size,
Lmax = (Fc + K - 1) * T keys, and an additive `past_bias` (Lmax,) that is 0 on filled slots and
`MASKED` on empty ones. exp(MASKED) underflows to exactly 0 in fp32 and fp16, so the result is
the unpadded attention. The same graph denoises (t > 0: use `velocity`) and appends a clean
frame to the cache (t = 0: use `k`, `v`, `feature`): a frame's keys/values are computed on the
way to its velocity anyway.

Predicted frames carry no proprio state (their index is >= the Fc observed frames), so
`video_frame` uses the learned "no state" vector, exactly like `VideoModel._rollout_cached`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avdp_ros.model.config import ACTION_DIM, STATE_DIM
from avdp_ros.model.kinds import kind_spec
from avdp_ros.model.layers import modulate, patchify
from avdp_ros.model.policy import Policy

MASKED = -1.0e4  # additive attention bias of an empty KV slot (fp16-representable)
VIDEO_MODES = ("kv", "recompute")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" or "int64"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Dims:
    """Every static size of a policy's stages, derived from its config."""

    cams: int
    C: int
    h: int
    w: int
    S: int          # tokenizer image side
    Fc: int         # context frames
    K: int          # predicted frames
    P: int          # frames of the past the IDM sees
    H: int          # horizon
    T: int          # video tokens per frame
    D: int          # video width
    n_head: int
    n_layer: int
    Dv: int         # video features fed to the IDM (0 = none)
    state: bool     # the IDM encoder reads the proprio state (idm.use_state)
    L: int          # IDM conditioning tokens
    Di: int         # IDM width
    noised: bool = False  # the IDM reads a noised future and its flow time (idm.future_noise "independent")
    tokens: int = 0       # video tokens the IDM pools (idm.future_input "tokens"; then it reads no future frames)

    @property
    def head_dim(self) -> int:
        return self.D // self.n_head

    @property
    def kv_len(self) -> int:
        """Largest KV cache a frame attends to: every frame before the last predicted one."""
        return (self.Fc + self.K - 1) * self.T

    @classmethod
    def from_config(cls, cfg, kind: str) -> Dims:
        C, h, w = cfg.latent_shape
        v, i = cfg.video, cfg.idm
        T = cfg.n_cameras * (h // v.patch_size) * (w // v.patch_size)
        idm = kind_spec(kind).has_video
        tokens = i.video_tokens if idm and i.future_input == "tokens" else 0
        P = i.past_frames
        frames = P + (cfg.future_frames if idm and not tokens else 0)
        Dv = i.video_feature_dim if idm else 0
        L = frames * cfg.n_cameras * (h // i.patch_size) * (w // i.patch_size) + 1 + int(i.use_state) + \
            ((cfg.context_frames + cfg.future_frames) if Dv else 0) + tokens
        return cls(cams=cfg.n_cameras, C=C, h=h, w=w, S=int(cfg.tokenizer.get("image_size", 0)),
                   Fc=cfg.context_frames, K=cfg.future_frames, P=P, H=cfg.horizon, T=T, D=v.n_embd,
                   n_head=v.n_head, n_layer=v.n_layer, Dv=Dv, L=L, Di=i.n_embd, state=i.use_state,
                   noised=idm and i.future_noise == "independent", tokens=tokens)


def _f(name, *shape):
    return TensorSpec(name, tuple(shape), "float32")


def _i(name, *shape):
    return TensorSpec(name, tuple(shape), "int64")


def stage_specs(d: Dims, kind: str, video_mode: str = "kv") -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """stage name -> (inputs, outputs) for a policy of `kind` (one of model.kinds.POLICY_KINDS)."""
    lat = (d.cams, d.C, d.h, d.w)
    kv = (d.n_layer, 1, d.n_head)
    specs = {"encoder": ([_f("images", d.cams, 3, d.S, d.S)], [_f("latents", *lat)])}
    has_video = kind_spec(kind).has_video
    if has_video:
        specs["decoder"] = ([_f("latents", d.K * d.cams, d.C, d.h, d.w)], [_f("images", d.K * d.cams, 3, d.S, d.S)])
        if video_mode == "kv":
            specs["video_context"] = (
                [_f("context", 1, d.Fc, *lat), _i("instr", 1), _f("state", 1, d.Fc, STATE_DIM)],
                [_f("past_k", *kv, d.Fc * d.T, d.head_dim), _f("past_v", *kv, d.Fc * d.T, d.head_dim),
                 _f("features", 1, d.Fc, d.D)])
            specs["video_frame"] = (
                [_f("x", 1, *lat), _f("t", 1), _i("instr", 1), _i("frame", 1),
                 _f("past_k", *kv, d.kv_len, d.head_dim), _f("past_v", *kv, d.kv_len, d.head_dim),
                 _f("past_bias", d.kv_len)],
                [_f("velocity", 1, *lat), _f("k", *kv, d.T, d.head_dim), _f("v", *kv, d.T, d.head_dim),
                 _f("feature", 1, 1, d.D)])
        elif video_mode == "recompute":
            n = d.Fc + d.K
            specs["video_sequence"] = (
                [_f("frames", 1, n, *lat), _f("t", 1, n), _i("instr", 1), _f("state", 1, d.Fc, STATE_DIM)],
                [_f("velocity", 1, n, *lat), _f("features", 1, n, d.D)])
        else:
            raise ValueError(f"video_mode '{video_mode}': expected one of {VIDEO_MODES}")
        if d.tokens:
            specs["video_tokens"] = (
                [_f("context", 1, d.Fc, *lat), _i("instr", 1), _f("state", 1, d.Fc, STATE_DIM),
                 _f("noise", 1, d.K, *lat)],
                [_f("tokens", 1, (d.Fc + d.K) * d.T, d.D)])
    frames = d.P + (d.K if has_video and not d.tokens else 0)
    # a state-free encoder (idm.use_state false) has no state input: ONNX prunes unused inputs
    enc_in = [_f("frames", 1, frames, *lat)] + ([_f("state", 1, STATE_DIM)] if d.state else []) + [_i("instr", 1)]
    if d.Dv:
        enc_in.append(_f("video_features", 1, d.Fc + d.K, d.Dv))
    if d.noised:
        enc_in.append(_f("future_t", 1))
    if d.tokens:
        enc_in.append(_f("video_tokens", 1, (d.Fc + d.K) * d.T, d.D))
    specs["idm_encoder"] = (enc_in, [_f("ctx", 1, d.L, d.Di)])
    specs["action_step"] = ([_f("a", 1, d.H, ACTION_DIM), _f("t", 1), _f("ctx", 1, d.L, d.Di)],
                            [_f("velocity", 1, d.H, ACTION_DIM)])
    return specs


# ---- the stage modules ------------------------------------------------------------------------


class EncoderStage(nn.Module):
    def __init__(self, policy: Policy):
        super().__init__()
        self.vae = policy.tokenizer.vae
        self.scale = float(policy.tokenizer.config.latent_scale)
        self.C = policy.tokenizer.config.latent_channels

    def forward(self, images: Tensor) -> Tensor:
        moments = self.vae._encode(images * 2.0 - 1.0)  # (N, 2C, h, w): mean, logvar
        return moments[:, :self.C] * self.scale  # the posterior mean, as Tokenizer.encode


class DecoderStage(nn.Module):
    def __init__(self, policy: Policy):
        super().__init__()
        self.vae = policy.tokenizer.vae
        self.scale = float(policy.tokenizer.config.latent_scale)

    def forward(self, latents: Tensor) -> Tensor:
        x = self.vae._decode(latents / self.scale, return_dict=False)[0]
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class VideoContextStage(nn.Module):
    """Clean pass over the observed frames (`VideoModel._encode_clean(context, ..., 0, None)`)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.m = policy.video

    def forward(self, context: Tensor, instr: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.m
        t = context.new_zeros(context.shape[:2])  # (1, Fc): clean
        has = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)  # every observed frame has state
        hidden, kv = m._backbone(context, m._cond(t, instr, state, has), 0, None)  # (1, Fc, T, D)
        past_k = torch.stack([k for k, _ in kv])  # (nL, 1, nh, Fc*T, hs)
        past_v = torch.stack([v for _, v in kv])
        return past_k, past_v, hidden.mean(dim=2)


def _attend_padded(attn, x: Tensor, past_k: Tensor, past_v: Tensor, past_bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`layers.Attention.forward` with a padded past: x (1, T, D), past (1, nh, Lmax, hs),
    past_bias (Lmax,) additive. Returns (output (1, T, D), own k, own v (1, nh, T, hs))."""
    B, L, D = x.shape
    q, k, v = attn.qkv(x).split(D, dim=-1)
    q, k, v = (z.view(B, L, attn.n_head, D // attn.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, L, hs)
    k_all, v_all = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    bias = torch.cat([past_bias, past_bias.new_zeros(L)])[None, :]  # (1, Lmax + L): own frame always visible
    y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias)  # (B, nh, L, hs)
    return attn.proj(y.transpose(1, 2).reshape(B, L, D)), k, v


class VideoFrameStage(nn.Module):
    """One frame at absolute index `frame` against the padded KV cache of earlier frames; the
    cached twin of `VideoModel._backbone(x[:, None], cond, index, kv)` + `_velocity`."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.m = policy.video

    def forward(self, x: Tensor, t: Tensor, instr: Tensor, frame: Tensor, past_k: Tensor, past_v: Tensor,
                past_bias: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.m
        tok = m.patch_in(patchify(x[:, None], m.cfg.video.patch_size))  # (1, 1, cams, N, D)
        tok = tok + m.pos_spatial + m.pos_camera[:, None, :]
        tok = tok + m.pos_frame.index_select(0, frame)[:, None, None, :]
        h = tok.reshape(1, 1, m.tokens_per_frame, -1)  # (1, 1, T, D)
        cond = m._cond(t[:, None], instr, None, None)  # (1, 1, D): predicted frames have no state
        ks, vs = [], []
        for i, block in enumerate(m.blocks):
            B, Fr, T, D = h.shape
            shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(cond).unsqueeze(2).chunk(6, dim=-1)
            y, k, v = _attend_padded(block.attn, modulate(block.norm1(h), shift1, scale1).reshape(B, Fr * T, D),
                                     past_k[i], past_v[i], past_bias)
            h = h + gate1 * y.view(B, Fr, T, D)
            h = h + gate2 * block.mlp(modulate(block.norm2(h), shift2, scale2))
            ks.append(k)
            vs.append(v)
        velocity = m._velocity(h, cond)[:, 0]  # (1, cams, C, h, w)
        return velocity, torch.stack(ks), torch.stack(vs), h.mean(dim=2)


class VideoSequenceStage(nn.Module):
    """Context recompute: the whole (Fc + K)-frame sequence every call. Block-causal attention
    means the unfinished later slots cannot change earlier frames, so frame Fc + j's velocity
    only depends on the frames before it (as in `VideoModel._rollout_recompute`)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.m = policy.video

    def forward(self, frames: Tensor, t: Tensor, instr: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        m = self.m
        n, Fc = frames.shape[1], state.shape[1]
        has = torch.arange(n, device=frames.device)[None, :] < Fc  # (1, n): observed frames carry state
        padded = torch.cat([state, state[:, -1:].expand(1, n - Fc, state.shape[2])], dim=1)  # (1, n, 10)
        cond = m._cond(t, instr, padded, has)
        hidden, _ = m._backbone(frames, cond, 0, None)
        return m._velocity(hidden, cond), hidden.mean(dim=2)


class VideoTokensStage(nn.Module):
    """`VideoModel.tokens`: one pass over the clean context and pure-noise future slots."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.m = policy.video

    def forward(self, context: Tensor, instr: Tensor, state: Tensor, noise: Tensor) -> Tensor:
        return self.m.tokens(context, instr, state, noise)


class IdmEncoderStage(nn.Module):
    def __init__(self, policy: Policy):
        super().__init__()
        self.encoder = policy.actor.encoder
        self.use_state = policy.cfg.idm.use_state
        self.features = policy.cfg.idm.video_feature_dim > 0 and policy.video is not None
        self.noised = policy.actor.noised_future
        self.tokens = policy.video is not None and not policy.actor.reads_frames

    def forward(self, frames: Tensor, *rest: Tensor) -> Tensor:
        """(frames, state, instr[, video_features][, future_t][, video_tokens]); no state when
        idm.use_state is false."""
        rest = list(rest)
        state = rest.pop(0) if self.use_state else None
        instr = rest.pop(0)
        feats = rest.pop(0) if self.features else None
        future_t = rest.pop(0) if self.noised else None
        tokens = rest.pop(0) if self.tokens else None
        return self.encoder(frames, state, instr, feats, future_t, tokens)


class ActionStepStage(nn.Module):
    def __init__(self, policy: Policy):
        super().__init__()
        self.head = policy.actor.head

    def forward(self, a: Tensor, t: Tensor, ctx: Tensor) -> Tensor:
        return self.head(a, t, ctx)


STAGE_MODULES = {
    "encoder": EncoderStage, "decoder": DecoderStage, "video_context": VideoContextStage,
    "video_frame": VideoFrameStage, "video_sequence": VideoSequenceStage, "video_tokens": VideoTokensStage,
    "idm_encoder": IdmEncoderStage,
    "action_step": ActionStepStage,
}


def build_stages(policy: Policy, video_mode: str = "kv") -> tuple[Dims, dict[str, tuple[nn.Module, list, list]]]:
    """The stage modules of `policy` with their input/output specs: name -> (module, inputs, outputs)."""
    dims = Dims.from_config(policy.cfg, policy.kind)
    specs = stage_specs(dims, policy.kind, video_mode)
    return dims, {name: (STAGE_MODULES[name](policy).eval(), ins, outs) for name, (ins, outs) in specs.items()}


def example_inputs(inputs: list[TensorSpec], cfg, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """Plausible tensors for tracing / parity checks (indices in range, t in [0, 1], bias 0)."""
    out = []
    for spec in inputs:
        if spec.dtype == "int64":
            high = {"instr": len(cfg.instructions), "frame": cfg.context_frames + cfg.future_frames}[spec.name]
            out.append(torch.randint(0, high, spec.shape, generator=generator))
        elif spec.name in ("t", "images", "future_t"):
            out.append(torch.rand(spec.shape, generator=generator))
        elif spec.name == "past_bias":
            out.append(torch.zeros(spec.shape))
        else:
            out.append(torch.randn(spec.shape, generator=generator))
    return tuple(out)
