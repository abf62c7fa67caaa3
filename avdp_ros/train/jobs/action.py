"""avdp-train-idm and avdp-train-baseline: the action heads, trained on action-labelled episodes.

`IDMJob`: inverse dynamics on the video model's futures, features or tokens; the video model, its
state statistics and the tokenizer come from `--video`. The video model is frozen (two-stage)
unless the head says idm.video_train "joint" (`--head shared`): then it is trained on with the
policy (`SharedBackbone`). `BaselineJob`: the same backbone and head on past frames only. Both share
data, schedule, normalisers, start weighting and validation (`ActionJob`), so a comparison between
them differs only in the video model.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from avdp_ros.model import idm as heads
from avdp_ros.model.checkpoint import load_checkpoint, load_into
from avdp_ros.model.config import ACTION_DIM, IDM_HEADS, STATE_DIM
from avdp_ros.model.idm import ActionBatch, Normalizer
from avdp_ros.model.kinds import POLICY_KINDS
from avdp_ros.model.video import VideoModel
from avdp_ros.train import engine
from avdp_ros.train.data import (
    WithFeatures,
    WithTokens,
    early_window_indices,
    latent_setup,
    stack_windows,
    val_indices,
    video_feature_table,
    video_token_table,
)
from avdp_ros.train.jobs.base import n_params
from avdp_ros.train.jobs.latent import LatentJob
from avdp_ros.train.jobs.video import clip_loss
from avdp_ros.train.metrics import action_errors
from avdp_ros.train.sources import init_source, preset_with_overrides, resume_config, resume_states


class SharedBackbone(torch.nn.Module):
    """What a joint run (idm.video_train "joint") optimises: the policy and the video model whose
    tokens it reads, in one module so the optimiser, the EMA and the resume weights cover both.
    The checkpoint stores them apart as every loader expects (`IDMJob.modules`)."""

    def __init__(self, policy: torch.nn.Module, video: VideoModel):
        super().__init__()
        self.policy, self.video = policy, video


class ActionJob(LatentJob):
    """What the IDM and the baseline share; subclasses say where their inputs come from.

    Methods take `m`, the module the engine trains (or its EMA); `actor(m)` is the policy in it.
    """

    def actor(self, m) -> torch.nn.Module:
        return m

    def add_source_args(self, p: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def source(self, args: argparse.Namespace) -> tuple[dict | None, dict[str, Any]]:
        """(config, states) to start from when not resuming; (None, {}) = a fresh model from --preset."""
        raise NotImplementedError

    def setup_video(self, states: dict[str, Any]) -> None:
        """Load whatever frozen model the head reads besides the latents (nothing by default)."""

    def futures(self, b: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, tuple]:
        """Metric-name prefix -> (the future the head is validated on (None: it sees none), the flow
        time a noised-future head reads it at)."""
        return {"": (None, None)}

    def val_batch(self, m, b: dict[str, torch.Tensor], future: torch.Tensor | None, t: float | None) -> ActionBatch:
        return self.batch(m, b, future)

    def batch(self, m, b: dict[str, torch.Tensor], future: torch.Tensor | None = None) -> ActionBatch:
        a = self.actor(m)
        return ActionBatch(context=b["context"], state=a.state_norm.normalize(b["state"]), instr=b["instr"],
                           future=None, actions=a.normalize_actions(b["actions"], b["state"]))

    # -- the shared job ------------------------------------------------------------------------

    def add_args(self, p: argparse.ArgumentParser) -> None:
        self.add_source_args(p)
        self.add_augment_args(p)
        p.add_argument("--include-failed", action="store_true",
                       help="also train actions on demonstrations recorded as failed (default: left out)")
        p.add_argument("--label-fraction", type=float, default=1.0,
                       help="fraction of action-labelled training episodes to use, seeded (default %(default)s)")
        p.add_argument("--action-steps", type=int, default=None, help="Euler steps for validation samples")
        p.add_argument("--early-weight", type=int, default=1,
                       help="draw windows of an episode's first --early-frames frames this many times as often "
                            "(default %(default)s = uniform); see early_window_indices")
        p.add_argument("--early-frames", type=int, default=10,
                       help="frames counted as the episode start (default %(default)s)")
        p.add_argument("--data-weight", type=int, nargs="+", metavar="W",
                       help="one integer per --data root: draw its windows W times per epoch (e.g. true labels "
                            "weighted up among pseudo-labelled sets); default 1 each")

    def check_args(self, args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
        self.check_augment_args(args)
        if args.early_weight < 1 or args.early_frames < 0:
            raise SystemExit(f"--early-weight {args.early_weight} (expected >= 1) / --early-frames "
                             f"{args.early_frames} (expected >= 0)")
        w = args.data_weight
        if w is not None and (len(w) != len(args.data or []) or min(w) < 1):
            raise SystemExit(f"--data-weight {' '.join(map(str, w))}: expected one integer >= 1 for each of the "
                             f"{len(args.data or [])} --data roots")

    def build(self, args: argparse.Namespace) -> None:
        out, kind = Path(args.out), self.kind
        if args.resume:
            states, meta = resume_states(out, kind)
            src_cfg, src_states = resume_config(args, meta["config"]), states
        else:
            src_cfg, src_states = self.source(args)
        tok = self.tokenizer(args, src_cfg, src_states)
        s = self.setup = latent_setup(args, self.info, tok, src_cfg, require_actions=True,
                                      label_fraction=args.label_fraction)
        self.roots = s.roots
        self.setup_video(src_states)
        policy = self.model = getattr(heads, self.spec.actor)(s.cfg)
        policy.state_norm.fit(torch.from_numpy(s.train.state_rows()))
        chunks, starts = (torch.from_numpy(x) for x in s.train.action_chunks())
        policy.action_norm.fit(policy.action_space(chunks, starts))
        if args.resume:
            load_into(policy, states[kind], f"{out / engine.LATEST} {kind}")
        elif getattr(args, "init", None):
            load_into(policy, src_states[kind], f"--init {args.init} {kind}")
        elif getattr(args, "init_actor", None):
            self.log(init_actor(policy, args.init_actor))
        self.log(f"{kind}: {n_params(policy)}, device {self.device}")
        self.dataset = self.train_set(s.train)
        root_weights = dict(zip(s.roots, args.data_weight)) if args.data_weight else {}
        if args.early_weight > 1 or root_weights:
            idx = early_window_indices(s.train, args.early_frames, args.early_weight, root_weights)
            self.log(f"episode-start windows weighted x{args.early_weight}, datasets x{args.data_weight or 1}: "
                     f"{len(idx)} draws per epoch for {len(s.train)} windows")
            self.dataset = torch.utils.data.Subset(self.dataset, idx)
        self.val_idx = val_indices(s.val, args.seed)

    def train_set(self, windows) -> torch.utils.data.Dataset:
        return windows

    def loss(self, m, b: dict[str, torch.Tensor]):
        loss, logs = self.actor(m).loss(self.batch(m, b))
        return loss, dict(logs, loss=loss.item())

    def validate(self, m, step: int) -> dict[str, float]:
        if not self.val_idx:
            return {}
        s, n = self.setup, len(self.val_idx)
        b = stack_windows(s.val, self.val_idx, self.device)
        gen = torch.Generator(device="cpu").manual_seed(self.args.seed)
        noise = torch.randn((n, s.cfg.horizon, ACTION_DIM), generator=gen).to(self.device)
        metrics: dict[str, float] = {}
        actor = self.actor(m)
        for prefix, fut in self.futures(b, gen).items():
            a = actor.unnormalize_actions(actor.sample(self.val_batch(m, b, *fut), steps=self.args.action_steps,
                                                       noise=noise), b["state"])
            metrics.update({prefix + k: v for k, v in action_errors(a, b["actions"]).items()})
        return metrics

    def modules(self, m) -> dict[str, torch.nn.Module]:
        return {self.kind: self.actor(m), "tokenizer": self.tok}

    def extra(self) -> dict[str, Any]:
        return dict(super().extra(), label_fraction=self.args.label_fraction, data_weight=self.args.data_weight,
                    train_episodes=[r.key for r in self.setup.train.refs])


class BaselineJob(ActionJob):
    kind = "baseline"
    description = "Train the action-only baseline (same backbone, no video model)."

    def add_source_args(self, p: argparse.ArgumentParser) -> None:
        self.add_tokenizer_and_init_args(p)

    def source(self, args: argparse.Namespace) -> tuple[dict | None, dict[str, Any]]:
        return init_source(args, self.kind) if args.init else (None, {})


class IDMJob(ActionJob):
    kind = "idm"
    description = ("Train the inverse dynamics policy on action-labelled episodes (the video model frozen, "
                   "or trained on jointly with --head shared).")

    def add_source_args(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--video", help="video checkpoint directory (gives the tokenizer, the config and the "
                                       "frozen video model; required unless --resume)")
        p.add_argument("--head", choices=sorted(IDM_HEADS), default="teacher",
                       help="action-head preset: how the IDM meets its test-time inputs (model/config.py "
                            "IDM_HEADS; default %(default)s)")
        p.add_argument("--init-actor", metavar="CHECKPOINT",
                       help="start the observation encoder and action head from this baseline or idm "
                            "checkpoint's weights where shapes allow (e.g. a trained action-only policy: "
                            "a comparison at equal training budget)")
        p.add_argument("--token-draws", type=int, default=0, metavar="K",
                       help="heads that read video tokens (vpp) with a frozen video model: compute K noise "
                            "draws of every window's tokens once and read one of them each step, instead of a "
                            "video-model pass per step (several times faster on a CPU; memory: K x windows x "
                            "tokens x width in float16). Default %(default)s = a fresh draw every step")

    def source(self, args: argparse.Namespace) -> tuple[dict | None, dict[str, Any]]:
        if not args.video:
            raise SystemExit("--video is required (the video checkpoint directory)")
        states, vmeta = load_checkpoint(args.video, expected_kind="video")
        # the video side (tokenizer, latents, frames, vocabulary) comes from the video model; the
        # action side (horizon, action space, IDM architecture, sampler steps) from --preset
        a = preset_with_overrides(args)
        cfg = dict(vmeta["config"], horizon=a.horizon, relative_actions=a.relative_actions,
                   action_steps=a.action_steps, action_temperature=a.action_temperature,
                   idm=dataclasses.asdict(a.idm))
        return cfg, {"tokenizer": states["tokenizer"], "video": states["video"],
                     "video_state_norm": states["state_norm"]}

    def check_args(self, args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
        super().check_args(args, p)
        if args.token_draws < 0:
            raise SystemExit(f"--token-draws {args.token_draws}: expected >= 0 (0 = a fresh draw every step)")

    @property
    def use_features(self) -> bool:
        return self.setup.cfg.idm.video_feature_dim > 0

    @property
    def joint(self) -> bool:
        """The video model trains on with the policy (idm.video_train "joint")."""
        return self.setup.cfg.idm.video_train == "joint"

    def actor(self, m) -> torch.nn.Module:
        return m.policy if isinstance(m, SharedBackbone) else m

    def video_of(self, m) -> VideoModel:
        """The video model `m` reads: its own when trained jointly (the EMA's in validation)."""
        return m.video if isinstance(m, SharedBackbone) else self.video

    def build(self, args: argparse.Namespace) -> None:
        super().build(args)
        if self.joint:  # the video model becomes part of what is optimised (and averaged, and resumed)
            self.model = SharedBackbone(self.model, self.video.train().requires_grad_(True))
            w = self.setup.cfg.idm.video_loss_weight
            self.log(f"joint training: the action loss reaches the video model through its tokens; "
                     f"auxiliary video loss weight {w}; {n_params(self.model)} trained")

    def setup_video(self, states: dict[str, Any]) -> None:
        video = VideoModel(self.setup.cfg)
        load_into(video, states["video"], "video")
        norm = Normalizer(STATE_DIM)
        load_into(norm, states["video_state_norm"], "video_state_norm")
        self.video = video.to(self.device).eval().requires_grad_(False)
        self.video_norm = norm.to(self.device)  # fixed in joint runs too: the statistics the model learned under

    def train_set(self, windows) -> torch.utils.data.Dataset:
        k = self.args.token_draws
        if k:
            if self.reads_frames or self.joint:
                raise SystemExit(f"--token-draws {k}: only for a head that reads the tokens of a frozen video "
                                 f"model (idm.future_input 'tokens', video_train 'frozen'); this one has "
                                 f"'{self.setup.cfg.idm.future_input}', '{self.setup.cfg.idm.video_train}'")
            table = video_token_table(windows, lambda b, noise: self.tokens(b, self.video, noise), k, self.device,
                                      self.args.seed + 3, progress=self.info.is_main and not self.args.no_progress)
            self.log(f"video tokens cached: {k} noise draws per window, {table.numel() * 2 / 1e9:.2f} GB")
            return WithTokens(windows, table)
        if not self.use_features:
            return windows
        table = video_feature_table(windows, self.video, self.video_norm, self.setup.cfg.context_frames,
                                    self.device, progress=self.info.is_main and not self.args.no_progress)
        return WithFeatures(windows, table)

    def features(self, b: dict[str, torch.Tensor], future: torch.Tensor) -> torch.Tensor | None:
        if not self.use_features:
            return None
        if "video_features" in b and future is b["future"]:
            return b["video_features"]  # precomputed for the true future
        with torch.no_grad():
            seq = torch.cat([b["context"], future], dim=1)  # (B, Fc+K, cams, C, h, w)
            state = self.video_norm.normalize(b["states"][:, :self.setup.cfg.context_frames])
            return self.video.features(seq, b["instr"], state)  # (B, Fc+K, n_embd)

    @property
    def reads_frames(self) -> bool:
        return self.setup.cfg.idm.future_input == "frames"

    def tokens(self, b: dict[str, torch.Tensor], video: VideoModel, noise: torch.Tensor | None = None) -> torch.Tensor:
        """VideoModel.tokens of the window's context and pure-noise future slots (a fresh draw each
        training step, as each plan at inference draws its own); with gradient in joint runs."""
        cfg = self.setup.cfg
        if noise is None:
            noise = torch.randn(b["future"].shape, device=self.device)
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            state = self.video_norm.normalize(b["states"][:, :cfg.context_frames])
            return video.tokens(b["context"], b["instr"], state, noise)

    def loss(self, m, b: dict[str, torch.Tensor]):
        loss, logs = super().loss(m, b)
        w = self.setup.cfg.idm.video_loss_weight
        if self.joint and w > 0:  # the auxiliary objective keeps the shared backbone a video model
            vloss = clip_loss(self.video_of(m), self.video_norm, b)[0]
            loss = loss + w * vloss
            logs = dict(logs, video_loss=vloss.item(), loss=loss.item())
        return loss, logs

    def batch(self, m, b: dict[str, torch.Tensor], future: torch.Tensor | None = None) -> ActionBatch:
        if not self.reads_frames:
            tokens = b["video_tokens"] if "video_tokens" in b else self.tokens(b, self.video_of(m))
            return dataclasses.replace(super().batch(m, b), video_tokens=tokens)
        future = b["future"] if future is None else future
        return dataclasses.replace(super().batch(m, b), future=future, video_features=self.features(b, future),
                                   future_valid=b.get("future_valid"))

    def validate(self, m, step: int) -> dict[str, float]:
        self._val_gen = torch.Generator(device="cpu").manual_seed(self.args.seed + 1)  # the future's noise
        metrics = super().validate(m, step)
        if self.joint and self.val_idx:  # is the shared backbone still a video model? (fixed t and noise)
            b = stack_windows(self.setup.val, self.val_idx, self.device)
            gen = torch.Generator(device="cpu").manual_seed(self.args.seed + 2)
            metrics["video_loss"] = clip_loss(self.video_of(m), self.video_norm, b, gen)[0].item()
        return metrics

    def val_batch(self, m, b: dict[str, torch.Tensor], future: torch.Tensor, t: float | None) -> ActionBatch:
        if not self.reads_frames:
            noise = torch.randn(b["future"].shape, generator=self._val_gen).to(self.device)
            tokens = self.tokens(b, self.video_of(m), noise)
            return dataclasses.replace(ActionJob.batch(self, m, b), video_tokens=tokens)
        batch = self.batch(m, b, future)
        if self.actor(m).noised_future:
            eps = torch.randn(future.shape, generator=self._val_gen).to(self.device)
            batch = self.actor(m).noise_future(batch, torch.full((len(future),), t, device=self.device), eps)
        return batch

    def futures(self, b: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor | None]:
        cfg = self.setup.cfg
        if not self.reads_frames:
            return {"": (None, None)}  # the tokens of pure-noise slots: the same in training and at inference
        vnoise = torch.randn((len(b["context"]), cfg.future_frames) + b["context"].shape[2:],
                             generator=gen).to(self.device)
        state = self.video_norm.normalize(b["states"][:, :cfg.context_frames])
        pred, _ = self.video.rollout(b["context"], b["instr"], state, k=cfg.future_frames, noise=vnoise)
        out = {"": (pred, cfg.idm.future_t), "gt_future/": (b["future"], 0.0)}  # as at inference / teacher-forced
        if self.actor(self.model).noised_future:
            out["no_future/"] = (b["future"], 1.0)  # pure noise: the action-only mode inside the IDM
        return out

    def modules(self, m) -> dict[str, torch.nn.Module]:
        return dict(super().modules(m), video=self.video_of(m), video_state_norm=self.video_norm)

    def extra(self) -> dict[str, Any]:
        return dict(super().extra(), token_draws=self.args.token_draws)


def init_actor(policy: torch.nn.Module, path: str) -> str:
    """Copy the encoder and head weights of a baseline or idm checkpoint into `policy` where names
    and shapes match; frame position embeddings are copied for the frames both have (the past
    frames first in both). The normalisers come along: the weights learned under those statistics
    (as `--init` keeps them). Returns a log line naming what was copied and what starts fresh."""
    states, meta = load_checkpoint(path)
    kind = meta.get("kind")
    if kind not in POLICY_KINDS:
        raise SystemExit(f"--init-actor {path}: a '{kind}' checkpoint; expected a baseline or idm policy")
    src = states[kind]
    own = policy.state_dict()
    copied, fresh = 0, []
    for name, value in own.items():
        w = src.get(name)
        if w is not None and w.shape == value.shape:
            own[name] = w.to(value.dtype)
            copied += 1
        elif w is not None and name == "encoder.pos_frame" and w.shape[1:] == value.shape[1:]:
            n = min(len(w), len(value))
            own[name][:n] = w[:n]
            copied += 1
        else:
            fresh.append(name)
    policy.load_state_dict(own)
    return f"--init-actor {path}: {copied} tensors from its {kind}; new: {', '.join(fresh) or 'none'}"
