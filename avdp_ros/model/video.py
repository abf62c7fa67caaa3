"""Autoregressive latent video model: a block-causal DiT over per-frame tokens of all cameras.

A frame is the tokenizer latents of every camera, (cams, C, h, w), cut into p x p patches, so a
frame is T = cams * (h/p) * (w/p) tokens. Tokens get a spatial, a camera and a frame position
embedding. Each frame has its own conditioning vector (its flow time t, the instruction and, when
known, the proprio state) that modulates every block through adaLN-zero (DiT).

Attention is block-causal: a token sees the tokens of its own frame and of earlier frames. Training
is diffusion forcing: every frame gets its own noise level, so at rollout the context frames can be
clean (t = 0) while only the newest frame is noisy, and a KV cache of the clean frames makes each
denoising step cost one frame's tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import flow
from .config import STATE_DIM, PolicyConfig
from .layers import (
    KV,
    MLP,
    Attention,
    Normalizer,
    TimestepEmbedder,
    init_weights,
    modulate,
    patchify,
    unpatchify,
)


def block_causal_mask(n_frames: int, frame_offset: int, tokens_per_frame: int, device=None) -> Tensor:
    """(n_frames*T, (frame_offset+n_frames)*T) bool: query frame i (absolute frame_offset + i) may
    attend to every token of key frames 0 .. frame_offset + i."""
    q_frame = torch.arange(frame_offset, frame_offset + n_frames, device=device)
    k_frame = torch.arange(frame_offset + n_frames, device=device)
    allowed = k_frame[None, :] <= q_frame[:, None]  # (Fq, Fk)
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class VideoBlock(nn.Module):
    """Block-causal self-attention + MLP, both modulated per frame by adaLN-zero."""

    def __init__(self, n_embd: int, n_head: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(n_embd, n_head)
        self.norm2 = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(n_embd, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(n_embd, 6 * n_embd))

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor | None, past: KV | None) -> tuple[Tensor, KV]:
        """x (B, F, T, D) tokens, cond (B, F, D) per frame -> (x, this call's keys/values)."""
        B, Fr, T, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).unsqueeze(2).chunk(6, dim=-1)  # (B, F, 1, D)
        h = modulate(self.norm1(x), shift1, scale1).reshape(B, Fr * T, D)
        y, kv = self.attn(h, mask, past)  # (B, F*T, D)
        x = x + gate1 * y.view(B, Fr, T, D)
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x, kv


class VideoModel(nn.Module):
    """Predicts the flow velocity of every frame's latents given clean-or-noisy earlier frames.

    Shapes: latents (B, F, cams, C, h, w); t (B, F) in [0, 1]; instr (B,) long; state (B, Fs, 10)
    normalised (with `state_norm`), Fs <= F (frames from index Fs on have no known state and get a
    learned "no state" vector).
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        v = cfg.video
        C, h, w = cfg.latent_shape
        p = v.patch_size
        self.n_patch = (h // p) * (w // p)
        self.tokens_per_frame = cfg.n_cameras * self.n_patch
        D = v.n_embd
        self.patch_in = nn.Linear(C * p * p, D)
        self.pos_spatial = nn.Parameter(torch.randn(self.n_patch, D) * 0.02)
        self.pos_camera = nn.Parameter(torch.randn(cfg.n_cameras, D) * 0.02)
        self.pos_frame = nn.Parameter(torch.randn(v.max_frames, D) * 0.02)
        self.t_embed = TimestepEmbedder(D)
        self.instr_embed = nn.Embedding(len(cfg.instructions), D)
        self.state_proj = nn.Linear(STATE_DIM, D)
        self.no_state = nn.Parameter(torch.zeros(D))
        self.blocks = nn.ModuleList([VideoBlock(D, v.n_head, v.mlp_ratio) for _ in range(v.n_layer)])
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.patch_out = nn.Linear(D, C * p * p)
        self.state_norm = Normalizer(STATE_DIM)  # stats of the proprio it was trained on (fit by the trainer)
        self.apply(init_weights)
        for lin in [b.ada[1] for b in self.blocks] + [self.ada_out[1], self.patch_out]:
            nn.init.zeros_(lin.weight)  # adaLN-zero: every block starts as the identity, output as 0
            nn.init.zeros_(lin.bias)

    # ---- network pieces -------------------------------------------------------------------

    def _tokens(self, x: Tensor, frame_offset: int) -> Tensor:
        """(B, F, cams, C, h, w) latents -> (B, F, T, D) embedded tokens."""
        B, Fr, cams = x.shape[:3]
        tok = self.patch_in(patchify(x, self.cfg.video.patch_size))  # (B, F, cams, N, D)
        tok = tok + self.pos_spatial + self.pos_camera[:, None, :]
        tok = tok + self.pos_frame[frame_offset:frame_offset + Fr, None, None, :]
        return tok.reshape(B, Fr, cams * self.n_patch, -1)  # (B, F, T, D)

    def _cond(self, t: Tensor, instr: Tensor, state: Tensor | None, has_state: Tensor | None) -> Tensor:
        """Per-frame conditioning (B, F, D) from t (B, F), instr (B,), state (B, F, 10) | None and
        has_state (B, F) bool (frames without state get the learned `no_state` vector)."""
        c = self.t_embed(t) + self.instr_embed(instr)[:, None, :]  # (B, F, D)
        if state is None:
            return c + self.no_state
        s = self.state_proj(state)  # (B, F, D)
        return c + torch.where(has_state[..., None], s, self.no_state)

    def _state_for_frames(self, state: Tensor | None, frame_offset: int, n_frames: int,
                          like: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Slice `state` (B, Fs, 10) to absolute frames [offset, offset + n), padding frames >= Fs
        with zeros and has_state = False."""
        if state is None or state.shape[1] == 0:
            return None, None
        B, Fs = state.shape[:2]
        idx = torch.arange(frame_offset, frame_offset + n_frames, device=state.device)
        has = (idx < Fs)[None, :].expand(B, n_frames)  # (B, F)
        picked = state[:, idx.clamp(max=Fs - 1)].to(like.dtype)  # (B, F, 10)
        return picked, has

    def _backbone(self, x: Tensor, cond: Tensor, frame_offset: int,
                  past: list[KV] | None) -> tuple[Tensor, list[KV]]:
        """Transformer over frames [offset, offset + F) of latents x (B, F, cams, C, h, w), attending
        to `past` (cached keys/values of frames < offset). Returns hidden (B, F, T, D) and the new
        frames' keys/values per layer."""
        Fr = x.shape[1]
        h = self._tokens(x, frame_offset)
        if past is not None and Fr == 1:
            mask = None  # one frame attending to itself and all earlier frames: nothing to hide
        else:
            mask = block_causal_mask(Fr, frame_offset, self.tokens_per_frame, device=x.device)
        new_kv = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, cond, mask, past[i] if past is not None else None)
            new_kv.append(kv)
        return h, new_kv

    def _velocity(self, hidden: Tensor, cond: Tensor) -> Tensor:
        """hidden (B, F, T, D) -> velocity (B, F, cams, C, h, w)."""
        C, h, w = self.cfg.latent_shape
        B, Fr = hidden.shape[:2]
        shift, scale = self.ada_out(cond).unsqueeze(2).chunk(2, dim=-1)  # (B, F, 1, D)
        out = self.patch_out(modulate(self.norm_out(hidden), shift, scale))  # (B, F, T, C*p*p)
        out = out.view(B, Fr, self.cfg.n_cameras, self.n_patch, -1)
        return unpatchify(out, self.cfg.video.patch_size, C, h, w)

    def _check(self, latents: Tensor, instr: Tensor) -> None:
        expected = (self.cfg.n_cameras, *self.cfg.latent_shape)
        if latents.dim() != 6 or tuple(latents.shape[2:]) != expected:
            raise ValueError(f"VideoModel: latents of shape {tuple(latents.shape)}, expected (B, F, *{expected})")
        if latents.shape[1] > self.cfg.video.max_frames:
            raise ValueError(f"VideoModel: {latents.shape[1]} frames exceed video.max_frames "
                             f"{self.cfg.video.max_frames}")
        if instr.shape != latents.shape[:1]:
            raise ValueError(f"VideoModel: instr of shape {tuple(instr.shape)}, expected ({latents.shape[0]},)")

    # ---- public API -----------------------------------------------------------------------

    def forward(self, x_t: Tensor, t: Tensor, instr: Tensor, state: Tensor | None = None) -> Tensor:
        """Velocity (B, F, cams, C, h, w) of every frame of x_t, block-causal, no cache."""
        self._check(x_t, instr)
        st, has = self._state_for_frames(state, 0, x_t.shape[1], x_t)
        cond = self._cond(t, instr, st, has)
        hidden, _ = self._backbone(x_t, cond, 0, None)
        return self._velocity(hidden, cond)

    def features(self, latents: Tensor, instr: Tensor, state: Tensor | None = None) -> Tensor:
        """Per-frame features (B, F, n_embd) of clean frames: the last hidden states mean-pooled
        over each frame's tokens. Pass state for the observed frames only (as at rollout)."""
        self._check(latents, instr)
        t = latents.new_zeros(latents.shape[:2])
        st, has = self._state_for_frames(state, 0, latents.shape[1], latents)
        hidden, _ = self._backbone(latents, self._cond(t, instr, st, has), 0, None)
        return hidden.mean(dim=2)

    def tokens(self, context: Tensor, instr: Tensor, state: Tensor | None, noise: Tensor) -> Tensor:
        """The last hidden states (B, (Fc + K) * T, D) of one pass over the clean context and K
        pure-noise future slots (t = 1): the model's first denoising step of the whole future at
        once, read by a VPP-style action head (idm.future_input "tokens") instead of frames.

        Args:
            context: (B, Fc, cams, C, h, w) clean latents; state: (B, Fc, 10) normalised, or None.
            noise: (B, K, cams, C, h, w) the future slots.
        """
        x = torch.cat([context, noise.to(context.dtype)], dim=1)
        self._check(x, instr)
        Fc, n = context.shape[1], x.shape[1]
        t = torch.cat([context.new_zeros(context.shape[:2]), context.new_ones((context.shape[0], n - Fc))], dim=1)
        st, has = self._state_for_frames(state, 0, n, x)
        hidden, _ = self._backbone(x, self._cond(t, instr, st, has), 0, None)  # (B, F, T, D)
        return hidden.flatten(1, 2)

    def loss(self, latents: Tensor, instr: Tensor, state: Tensor | None = None, t: Tensor | None = None,
             noise: Tensor | None = None, generator: torch.Generator | None = None,
             state_frames: int | None = None) -> tuple[Tensor, dict]:
        """Diffusion-forcing flow-matching loss on a clip.

        Args:
            latents: (B, F, cams, C, h, w) clean latents.
            state: (B, F, 10) normalised proprio, or None. Only a random prefix of frames keeps its
                state (the rest see "no state"), as at rollout where predicted frames have none.
            t: (B, F) per-frame flow times; None samples them (`noise_levels`: a random prefix of
                frames may become context, clean or slightly noised). Context frames carry no
                loss (they are given, not predicted); a given `t` marks them with t = 0.
            noise: (B, F, cams, C, h, w) eps; None draws it.
            state_frames: how many leading frames keep their state (None: a random prefix).
        Returns:
            (scalar loss, logs {"video_loss", "video_t_mean"}).
        """
        self._check(latents, instr)
        B, Fr = latents.shape[:2]
        dev = latents.device
        split = (torch.randint(1, max(Fr - 1, 1) + 1, (B, 1), device=dev, generator=generator)
                 if state_frames is None else torch.full((B, 1), state_frames, device=dev))  # (B, 1)
        in_prefix = torch.arange(Fr, device=dev)[None, :] < split  # (B, F)
        if t is None:
            t, context = self.noise_levels(in_prefix, split, generator)
            t = t.to(latents.dtype)
        else:
            context = t == 0
        if noise is None:
            noise = torch.randn(latents.shape, device=dev, dtype=latents.dtype, generator=generator)
        x_t = flow.interpolate(latents, noise, t)
        st = state.to(latents.dtype) if state is not None else None
        cond = self._cond(t, instr, st, in_prefix if state is not None else None)
        hidden, _ = self._backbone(x_t, cond, 0, None)
        v = self._velocity(hidden, cond)
        per_frame = (v - flow.velocity_target(latents, noise)).pow(2).flatten(2).mean(-1)  # (B, F)
        weight = (~context).to(per_frame.dtype)
        loss = (per_frame * weight).sum() / weight.sum().clamp(min=1.0)
        return loss, {"video_loss": loss.item(), "video_t_mean": t.mean().item()}

    def rollout_loss(self, latents: Tensor, instr: Tensor, state: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """The loss on the model's own rollout: after the clip's first `context_frames` true frames
        it predicts j ~ U{1..K-1} frames itself (no gradient, its sampler and steps), and those
        predictions replace the true frames as context (t = 0, no loss) for the usual flow loss on
        the true frames after them. Why: at inference every frame after the first is conditioned
        on predictions; trained only on true context, the model never learns to correct its own
        errors, which compound (drift). Context noise imitates those errors; this shows it them.

        Args: as `loss`; latents (B, Fc + K, ...) with K >= 2. Returns: (loss, logs + "rollout_frames").
        """
        Fc = self.cfg.context_frames
        K = latents.shape[1] - Fc
        if K < 2:
            raise ValueError(f"VideoModel.rollout_loss: {latents.shape[1]} frames for {Fc} context frames; "
                             "expected at least 2 more (one to roll out, one to learn)")
        j = int(torch.randint(1, K, (), generator=generator))
        with torch.no_grad():
            pred, _ = self.rollout(latents[:, :Fc], instr, None if state is None else state[:, :Fc], k=j)
        seq = torch.cat([latents[:, :Fc], pred.to(latents.dtype), latents[:, Fc + j:]], dim=1)
        t = flow.sample_t(seq.shape[:2], generator, seq.device, self.cfg.video.logit_normal_t).to(seq.dtype)
        t[:, :Fc + j] = 0  # the true context and the rolled-out frames: given, no loss
        loss, logs = self.loss(seq, instr, state, t=t, generator=generator, state_frames=Fc)
        return loss, dict(logs, rollout_frames=j)

    def noise_levels(self, in_prefix: Tensor, split: Tensor,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Training flow times (B, F) and the context mask (B, F) (frames given as context: no loss).
        Each frame draws its own level; with probability `clean_prefix_prob` a sample's random prefix
        `in_prefix` (B, F) (`split` (B, 1) frames long, never all of them) becomes context: clean
        (t = 0), or with `video.context_noise` > 0 noised to t ~ U(0, context_noise)."""
        B, Fr = in_prefix.shape
        dev, v = in_prefix.device, self.cfg.video
        t = flow.sample_t((B, Fr), generator, dev, v.logit_normal_t)
        clean = torch.rand(B, 1, device=dev, generator=generator) < v.clean_prefix_prob
        context = in_prefix & clean & (split < Fr)
        level = torch.zeros_like(t)
        if v.context_noise > 0:
            level = torch.rand((B, Fr), device=dev, generator=generator) * v.context_noise
        return torch.where(context, level, t), context

    @torch.no_grad()
    def rollout(self, context: Tensor, instr: Tensor, state: Tensor | None = None, k: int | None = None,
                steps: int | None = None, noise: Tensor | None = None,
                cache: bool = True) -> tuple[Tensor, Tensor]:
        """Predict k frames after `context`, one at a time; each frame is denoised from noise with
        `steps` Euler steps while every earlier frame is clean (t = 0).

        Args:
            context: (B, Fc, cams, C, h, w) clean latents of the observed frames.
            state: (B, Fs, 10) normalised proprio of observed frames (Fs <= Fc), or None.
            k: frames to predict (default cfg.future_frames); Fc + k <= video.max_frames.
            steps: Euler steps per frame (default cfg.video_steps).
            noise: (B, k, cams, C, h, w) starting noise per frame; None draws it.
            cache: use the KV cache (True) or recompute the whole sequence each step (False,
                reference implementation; same result).
        Returns:
            (predicted latents (B, k, cams, C, h, w), features (B, Fc + k, n_embd) of all frames,
            computed with every frame clean).
        """
        self._check(context, instr)
        k = self.cfg.future_frames if k is None else k
        steps = self.cfg.video_steps if steps is None else steps
        B, Fc = context.shape[:2]
        if Fc + k > self.cfg.video.max_frames:
            raise ValueError(f"VideoModel.rollout: {Fc} context + {k} predicted frames exceed video.max_frames "
                             f"{self.cfg.video.max_frames}")
        if noise is None:
            noise = torch.randn((B, k) + context.shape[2:], device=context.device, dtype=context.dtype)
        elif noise.shape != (B, k) + context.shape[2:]:
            raise ValueError(f"VideoModel.rollout: noise of shape {tuple(noise.shape)}, "
                             f"expected {(B, k) + tuple(context.shape[2:])}")
        if cache:
            return self._rollout_cached(context, instr, state, noise, steps)
        return self._rollout_recompute(context, instr, state, noise, steps)

    def _encode_clean(self, frames: Tensor, instr: Tensor, state: Tensor | None, frame_offset: int,
                      past: list[KV] | None) -> tuple[Tensor, list[KV]]:
        """Clean (t = 0) pass over frames [offset, offset + F): (hidden (B, F, T, D), keys/values)."""
        t = frames.new_zeros(frames.shape[:2])
        st, has = self._state_for_frames(state, frame_offset, frames.shape[1], frames)
        return self._backbone(frames, self._cond(t, instr, st, has), frame_offset, past)

    def _rollout_cached(self, context, instr, state, noise, steps) -> tuple[Tensor, Tensor]:
        Fc = context.shape[1]
        hidden, kv = self._encode_clean(context, instr, state, 0, None)
        features, preds = [hidden.mean(dim=2)], []
        for j in range(noise.shape[1]):
            index = Fc + j
            st, has = self._state_for_frames(state, index, 1, context)

            def velocity(x: Tensor, t: Tensor, index=index, st=st, has=has, kv=kv) -> Tensor:
                cond = self._cond(t[:, None], instr, st, has)  # (B, 1, D)
                h, _ = self._backbone(x[:, None], cond, index, kv)
                return self._velocity(h, cond)[:, 0]

            frame = flow.euler_sample(velocity, noise[:, j], steps)  # (B, cams, C, h, w)
            hidden, new_kv = self._encode_clean(frame[:, None], instr, state, index, kv)
            kv = [(torch.cat([k0, k1], dim=2), torch.cat([v0, v1], dim=2)) for (k0, v0), (k1, v1) in zip(kv, new_kv)]
            features.append(hidden.mean(dim=2))
            preds.append(frame)
        return torch.stack(preds, dim=1), torch.cat(features, dim=1)

    def _rollout_recompute(self, context, instr, state, noise, steps) -> tuple[Tensor, Tensor]:
        frames = context
        for j in range(noise.shape[1]):
            clean_t = frames.new_zeros(frames.shape[:2])

            def velocity(x: Tensor, t: Tensor, frames=frames, clean_t=clean_t) -> Tensor:
                seq = torch.cat([frames, x[:, None]], dim=1)  # (B, F+1, cams, C, h, w)
                return self.forward(seq, torch.cat([clean_t, t[:, None]], dim=1), instr, state)[:, -1]

            frame = flow.euler_sample(velocity, noise[:, j], steps)
            frames = torch.cat([frames, frame[:, None]], dim=1)
        return frames[:, context.shape[1]:], self.features(frames, instr, state)
