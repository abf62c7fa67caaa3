"""Action policies: inverse dynamics over predicted frames, and the action-only baseline.

Both share one backbone (`ObsEncoder`: frames + state + instruction -> conditioning tokens) and
one flow-matching head (`ActionHead`: a small transformer over the H action tokens that
cross-attends to the conditioning tokens). They differ only in which frames they see:

- `InverseDynamics`: the last `idm.past_frames` context frames plus the K future frames (ground
  truth in training, predicted by the video model at inference), optionally with video-model
  features, which are detached so no action gradient reaches the video model (Video Policy's
  two-stage training). Or, with idm.future_input "tokens", no future frames but the video
  model's attention-pooled hidden states (VPP), detached unless idm.video_train is "joint"
  (the video model then is a shared backbone trained by both losses: `train/jobs/action.py`).
- `ActionOnlyPolicy`: the same last `idm.past_frames` frames and nothing predicted: the honest
  baseline (it differs from the IDM only by the predicted frames and video features).

States and actions in an `ActionBatch` are normalised; each policy owns `state_norm` and
`action_norm` (`Normalizer`) so the statistics travel in its checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import flow
from .config import ACTION_DIM, STATE_DIM, PolicyConfig
from .layers import (
    MLP,
    Attention,
    CrossAttention,
    EncoderBlock,
    Normalizer,
    TimestepEmbedder,
    init_weights,
    modulate,
    patchify,
)
from .rotation import actions_from_relative, actions_to_relative

__all__ = ["ActionBatch", "ActionOnlyPolicy", "InverseDynamics", "Normalizer"]


@dataclass
class ActionBatch:
    """Inputs of the action policies (all tensors on one device)."""

    context: Tensor                        # (B, Fc, cams, C, h, w) latents of observed frames
    state: Tensor                          # (B, 10) normalised proprio at the last observed frame
    instr: Tensor                          # (B,) long instruction indices
    future: Tensor | None = None           # (B, K, cams, C, h, w) future latents (truth / predicted)
    actions: Tensor | None = None          # (B, H, 10) normalised action chunk (training only)
    video_features: Tensor | None = None   # (B, Fv, n_embd_video) video-model features, or None
    future_t: Tensor | None = None         # (B,) flow time the future was noised to (future_noise "independent")
    video_tokens: Tensor | None = None     # (B, L, n_embd_video) VideoModel.tokens (future_input "tokens")
    future_valid: Tensor | None = None     # (B,) bool, training: the future shows what `actions` do. False
    #                                        for relabelled (DAgger) windows, whose frames follow the
    #                                        learner's actions, not the expert's label: pure noise there


class TokenPool(nn.Module):
    """Attention pooling (VPP's Video Former, one layer): `n` learned queries read a long sequence
    of video-model tokens (B, L, Dv) and return (B, n, D) for the observation encoder. `frozen`:
    the tokens are detached, so no action gradient reaches the video model (two-stage training);
    else (idm.video_train "joint") it flows back into the shared backbone."""

    def __init__(self, video_dim: int, n_embd: int, n_head: int, n: int, frozen: bool = True):
        super().__init__()
        self.frozen = frozen
        self.proj = nn.Linear(video_dim, n_embd)
        self.norm = nn.LayerNorm(n_embd)
        self.queries = nn.Parameter(torch.randn(n, n_embd) * 0.02)
        self.cross = CrossAttention(n_embd, n_head)

    def forward(self, tokens: Tensor) -> Tensor:
        q = self.queries.expand(tokens.shape[0], -1, -1)
        if self.frozen:
            tokens = tokens.detach()
        return q + self.cross(q, self.norm(self.proj(tokens)))


class ObsEncoder(nn.Module):
    """Frames (+ video features) + state + instruction -> conditioning tokens (B, L, D).

    Frame tokens are coarse latent patches with spatial, camera and frame-index embeddings; a
    few bidirectional transformer blocks mix everything.
    """

    def __init__(self, cfg: PolicyConfig, max_frames: int, video_feature_dim: int = 0, future_from: int | None = None):
        super().__init__()
        c = cfg.idm
        C, h, w = cfg.latent_shape
        self.patch_size = c.patch_size
        n_patch = (h // c.patch_size) * (w // c.patch_size)
        D = c.n_embd
        self.patch_in = nn.Linear(C * c.patch_size ** 2, D)
        self.pos_spatial = nn.Parameter(torch.randn(n_patch, D) * 0.02)
        self.pos_camera = nn.Parameter(torch.randn(cfg.n_cameras, D) * 0.02)
        self.pos_frame = nn.Parameter(torch.randn(max_frames, D) * 0.02)
        self.state_proj = nn.Linear(STATE_DIM, D) if c.use_state else None
        self.instr_embed = nn.Embedding(len(cfg.instructions), D)
        self.feature_proj = nn.Linear(video_feature_dim, D) if video_feature_dim else None
        self.pos_feature = nn.Parameter(torch.randn(cfg.video.max_frames, D) * 0.02) if video_feature_dim else None
        # frames from index `future_from` on are a noised future: their tokens are told its flow time
        self.future_from = future_from
        self.future_t_embed = (TimestepEmbedder(D) if future_from is not None and c.future_noise == "independent"
                               else None)
        self.token_pool = (TokenPool(cfg.video.n_embd, D, c.n_head, c.video_tokens, frozen=c.video_train == "frozen")
                           if future_from is not None and c.future_input == "tokens" else None)
        self.blocks = nn.ModuleList([EncoderBlock(D, c.n_head, c.mlp_ratio) for _ in range(c.enc_layers)])
        self.norm = nn.LayerNorm(D)

    def forward(self, frames: Tensor, state: Tensor, instr: Tensor,
                video_features: Tensor | None = None, future_t: Tensor | None = None,
                video_tokens: Tensor | None = None) -> Tensor:
        """frames (B, F, cams, C, h, w), state (B, 10), instr (B,), video_features (B, Fv, Dv),
        future_t (B,) the flow time of frames[:, future_from:] (future_noise "independent" only),
        video_tokens (B, L, Dv) (future_input "tokens" only)."""
        B, Fr = frames.shape[:2]
        tok = self.patch_in(patchify(frames, self.patch_size))  # (B, F, cams, N, D)
        tok = tok + self.pos_spatial + self.pos_camera[:, None, :] + self.pos_frame[:Fr, None, None, :]
        if self.future_t_embed is not None:
            if future_t is None:
                raise ValueError("this IDM reads noised futures (idm.future_noise 'independent'): "
                                 "ActionBatch.future_t is required")
            P = self.future_from  # observed frames keep their tokens
            tok = torch.cat([tok[:, :P], tok[:, P:] + self.future_t_embed(future_t)[:, None, None, None, :]], dim=1)
        parts = [tok.reshape(B, -1, tok.shape[-1])]  # (B, F*cams*N, D)
        if self.state_proj is not None:
            parts.append(self.state_proj(state.to(tok.dtype))[:, None, :])  # (B, 1, D)
        parts.append(self.instr_embed(instr)[:, None, :])  # (B, 1, D)
        if self.feature_proj is not None:
            if video_features is None:
                raise ValueError("this policy was configured with idm.video_feature_dim > 0: "
                                 "ActionBatch.video_features is required")
            # detach: the action loss must not train the video model (two-stage training)
            feats = video_features.detach().to(tok.dtype)
            parts.append(self.feature_proj(feats) + self.pos_feature[:feats.shape[1]])  # (B, Fv, D)
        if self.token_pool is not None:
            if video_tokens is None:
                raise ValueError("this IDM reads video-model tokens (idm.future_input 'tokens'): "
                                 "ActionBatch.video_tokens is required")
            parts.append(self.token_pool(video_tokens.to(tok.dtype)))  # (B, n, D)
        x = torch.cat(parts, dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, L, D)


class HeadBlock(nn.Module):
    """Self-attention over action tokens, cross-attention to conditioning, MLP; adaLN-zero on t."""

    def __init__(self, n_embd: int, n_head: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(n_embd, n_head)
        self.norm_x = nn.LayerNorm(n_embd)
        self.cross = CrossAttention(n_embd, n_head)
        self.norm2 = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(n_embd, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(n_embd, 6 * n_embd))

    def forward(self, x: Tensor, c: Tensor, ctx: Tensor) -> Tensor:
        """x (B, H, D) action tokens, c (B, D) time (+ pooled context) vector, ctx (B, L, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None, :].chunk(6, dim=-1)  # (B, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))[0]
        x = x + self.cross(self.norm_x(x), ctx)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class ActionHead(nn.Module):
    """Flow-matching velocity of an action chunk: (a_t (B, H, 10), t (B,), ctx (B, L, D)) -> (B, H, 10)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        c = cfg.idm
        D = c.n_embd
        self.action_in = nn.Linear(ACTION_DIM, D)
        self.pos = nn.Parameter(torch.randn(cfg.horizon, D) * 0.02)
        self.t_embed = TimestepEmbedder(D)
        self.blocks = nn.ModuleList([HeadBlock(D, c.n_head, c.mlp_ratio) for _ in range(c.head_layers)])
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.action_out = nn.Linear(D, ACTION_DIM)

    def forward(self, a_t: Tensor, t: Tensor, ctx: Tensor) -> Tensor:
        x = self.action_in(a_t) + self.pos  # (B, H, D)
        c = self.t_embed(t) + ctx.mean(dim=1)  # (B, D)
        for block in self.blocks:
            x = block(x, c, ctx)
        shift, scale = self.ada_out(c)[:, None, :].chunk(2, dim=-1)
        return self.action_out(modulate(self.norm_out(x), shift, scale))  # (B, H, 10)


class _ChunkPolicy(nn.Module):
    """Backbone + action head + normalisers; subclasses choose the frames (and features) seen."""

    def __init__(self, cfg: PolicyConfig, max_frames: int, video_feature_dim: int, future_from: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = ObsEncoder(cfg, max_frames, video_feature_dim, future_from)
        self.head = ActionHead(cfg)
        self.state_norm = Normalizer(STATE_DIM)
        self.action_norm = Normalizer(ACTION_DIM)
        self.apply(init_weights)
        for lin in [b.ada[1] for b in self.head.blocks] + [self.head.ada_out[1], self.head.action_out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    noised_future = False  # InverseDynamics with idm.future_noise "independent" reads a noised future
    reads_frames = False   # InverseDynamics reads future frames unless idm.future_input is "tokens"

    def _frames(self, batch: ActionBatch) -> Tensor:
        raise NotImplementedError

    def action_space(self, actions: Tensor, state: Tensor) -> Tensor:
        """Absolute (..., H, 10) actions + raw (..., 10) state -> the (unnormalised) space the head
        models: relative to the state when `cfg.relative_actions`, else unchanged."""
        return actions_to_relative(actions, state) if self.cfg.relative_actions else actions

    def normalize_actions(self, actions: Tensor, state: Tensor) -> Tensor:
        """Absolute actions -> the head's normalised training target."""
        return self.action_norm.normalize(self.action_space(actions, state))

    def unnormalize_actions(self, sample: Tensor, state: Tensor) -> Tensor:
        """A normalised sample of the head -> absolute (..., H, 10) actions (inverse of normalize_actions)."""
        a = self.action_norm.unnormalize(sample)
        return actions_from_relative(a, state) if self.cfg.relative_actions else a

    def _video_features(self, batch: ActionBatch) -> Tensor | None:
        return None

    def encode(self, batch: ActionBatch) -> Tensor:
        """Conditioning tokens (B, L, n_embd) for the action head (computed once per chunk)."""
        return self.encoder(self._frames(batch), batch.state, batch.instr, self._video_features(batch),
                            batch.future_t, batch.video_tokens)

    def loss(self, batch: ActionBatch, t: Tensor | None = None, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """Flow-matching loss on the normalised chunk `batch.actions` (B, H, 10).

        Returns:
            (scalar loss, logs {"action_loss"}).
        """
        if batch.actions is None:
            raise ValueError(f"{type(self).__name__}.loss: ActionBatch.actions is required")
        x0 = batch.actions
        B = x0.shape[0]
        if t is None:
            t = flow.sample_t((B,), generator, x0.device, self.cfg.idm.logit_normal_t).to(x0.dtype)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        v = self.head(flow.interpolate(x0, noise, t), t, self.encode(batch))
        loss = F.mse_loss(v, flow.velocity_target(x0, noise))
        return loss, {"action_loss": loss.item()}

    @torch.no_grad()
    def sample(self, batch: ActionBatch, steps: int | None = None, noise: Tensor | None = None,
               prefix: Tensor | None = None) -> Tensor:
        """A normalised action chunk (B, H, 10) by `steps` Euler steps (default cfg.action_steps)
        from `noise` (B, H, 10) (drawn when None). Use `unnormalize_actions` for robot units.

        Args:
            prefix: (B, P, 10) normalised actions, P < H, that the chunk must start with: the
                actions already committed to the robot while this chunk is computed. They are
                inpainted (flow.euler_sample), so the rest of the chunk continues them instead
                of jumping to another mode of the action distribution (real-time chunking).
        """
        steps = self.cfg.action_steps if steps is None else steps
        ctx = self.encode(batch)
        B, H = ctx.shape[0], self.cfg.horizon
        if noise is None:
            noise = torch.randn(B, H, ACTION_DIM, device=ctx.device, dtype=ctx.dtype)
        elif noise.shape != (B, H, ACTION_DIM):
            raise ValueError(f"{type(self).__name__}.sample: noise of shape {tuple(noise.shape)}, "
                             f"expected {(B, H, ACTION_DIM)}")
        known = mask = None
        if prefix is not None and prefix.shape[1] > 0:
            P = prefix.shape[1]
            if prefix.shape[0] != B or prefix.shape[2] != ACTION_DIM or P >= H:
                raise ValueError(f"{type(self).__name__}.sample: prefix of shape {tuple(prefix.shape)}, "
                                 f"expected ({B}, P, {ACTION_DIM}) with P < horizon {H}")
            known = torch.cat([prefix.to(noise), torch.zeros_like(noise[:, P:])], dim=1)
            mask = (torch.arange(H, device=noise.device) < P)[None, :, None]
        return flow.euler_sample(lambda a, t: self.head(a, t, ctx), noise, steps, known, mask)


class InverseDynamics(_ChunkPolicy):
    """pi(a_t..t+H | last past frames, future frames, state, instruction[, video features])."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__(cfg, cfg.idm.past_frames + (cfg.future_frames if cfg.idm.future_input == "frames" else 0),
                         cfg.idm.video_feature_dim, future_from=cfg.idm.past_frames)

    @property
    def reads_frames(self) -> bool:
        """The future as K frames (idm.future_input "frames"), else as video-model tokens."""
        return self.cfg.idm.future_input == "frames"

    @property
    def noised_future(self) -> bool:
        """UWM-style: the future is read at a flow time the encoder is told (idm.future_noise)."""
        return self.cfg.idm.future_noise == "independent"

    def _frames(self, batch: ActionBatch) -> Tensor:
        past = batch.context[:, -self.cfg.idm.past_frames:]
        if not self.reads_frames:
            return past  # the future comes as video tokens
        if batch.future is None:
            raise ValueError("InverseDynamics: ActionBatch.future (B, K, cams, C, h, w) is required")
        return torch.cat([past, batch.future], dim=1)  # (B, P + K, cams, C, h, w)

    def noise_future(self, batch: ActionBatch, t: Tensor, noise: Tensor | None = None,
                     generator: torch.Generator | None = None) -> ActionBatch:
        """`batch` with its future moved to flow time t (B,): (1 - t) future + t noise."""
        if noise is None:
            noise = torch.randn(batch.future.shape, device=batch.future.device, dtype=batch.future.dtype,
                                generator=generator)
        return dataclasses.replace(batch, future=flow.interpolate(batch.future, noise, t), future_t=t)

    def loss(self, batch: ActionBatch, t: Tensor | None = None, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """The flow-matching loss; with future_noise "independent" the (true) future is first noised
        to a flow time of its own, independent of the action chunk's: uniform in [0, 1], pure noise
        for a share `idm.future_drop` of windows and for every window whose future does not show
        its labels (`future_valid` False). `batch.future_t` given: used as is."""
        if self.noised_future and batch.future_t is None and batch.future is not None:
            B, dev = batch.future.shape[0], batch.future.device
            tf = torch.rand(B, device=dev, generator=generator)
            drop = torch.rand(B, device=dev, generator=generator) < self.cfg.idm.future_drop
            if batch.future_valid is not None:
                drop = drop | ~batch.future_valid.to(dev)
            tf = torch.where(drop, torch.ones_like(tf), tf).to(batch.future.dtype)
            batch = self.noise_future(batch, tf, generator=generator)
        return super().loss(batch, t, noise, generator)

    def _video_features(self, batch: ActionBatch) -> Tensor | None:
        return batch.video_features


class ActionOnlyPolicy(_ChunkPolicy):
    """pi(a_t..t+H | last past frames, state, instruction): no predicted frames, no video model."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__(cfg, cfg.idm.past_frames, 0)

    def _frames(self, batch: ActionBatch) -> Tensor:
        return batch.context[:, -self.cfg.idm.past_frames:]  # (B, P, cams, C, h, w)
