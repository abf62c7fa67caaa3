"""The policy boundary (openpi style): `infer(observation dict of numpy) -> dict` and `reset()`.

This is what the ROS policy node and the no-ROS evaluator call. It owns the frame history
(latents of the last `context_frames` observations), runs tokenizer -> video rollout -> IDM (or
tokenizer -> action-only baseline), and returns an action chunk in robot units:

    obs = {"camera": (H, W, 3) uint8, "wrist": (H, W, 3) uint8, "ee_pose": (7,) x y z qx qy qz qw,
           "gripper": width (m), "instruction": str}
    out = policy.infer(obs, noise=None, prefix=None)
    out["actions"]            (H, 8) float64: target pose7 + gripper width, action i due at t_obs + i / obs_hz
    out["predicted_frames"]   (K, cams, S, S, 3) uint8, only with return_frames=True (video policies)
    out["timings"]            {"tokenizer_ms", "video_ms", "idm_ms", "total_ms"}

`infer` expects to be called once per observation period (1 / obs_hz), which is how the frame
history is spaced in training; `observe(obs)` adds a frame without planning (when a controller
replans less often than it observes).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from avdp_ros.model import idm as heads
from avdp_ros.model.checkpoint import CheckpointError, load_checkpoint, load_into
from avdp_ros.model.config import ACTION_DIM, STATE_DIM, PolicyConfig
from avdp_ros.model.idm import ActionBatch, InverseDynamics, Normalizer
from avdp_ros.model.kinds import KINDS, POLICY_KINDS, kind_of_actor
from avdp_ros.model.rotation import pose7_to_pose9, pose9_to_pose7, pose_to_state10
from avdp_ros.model.tokenizer import Tokenizer, TokenizerConfig
from avdp_ros.model.video import VideoModel
from avdp_ros.validation import check_observation


class Policy:
    """A trained policy: video model + IDM ("idm" checkpoints) or the action-only baseline.

    Args:
        cfg: the policy config stored in the checkpoint.
        tokenizer: frame tokenizer (eval mode).
        actor: InverseDynamics or ActionOnlyPolicy (owns its state/action normalisers).
        video, video_state_norm: the frozen video model and its state normaliser (idm only).
        video_steps, action_steps: Euler steps per predicted frame / per action chunk
            (default: the config's).
    """

    def __init__(self, cfg: PolicyConfig, tokenizer: Tokenizer, actor: torch.nn.Module,
                 video: VideoModel | None = None, video_state_norm: Normalizer | None = None,
                 video_steps: int | None = None, action_steps: int | None = None):
        if isinstance(actor, InverseDynamics) and (video is None or video_state_norm is None):
            raise ValueError("an InverseDynamics policy needs the video model and its state normaliser")
        self.cfg = cfg
        self.tokenizer = tokenizer.eval()
        self.actor = actor.eval()
        self.video = video.eval() if video is not None else None
        self.video_state_norm = video_state_norm
        self.video_steps = video_steps or cfg.video_steps
        self.action_steps = action_steps or cfg.action_steps
        # scale of the drawn (never the injected) action noise; callers may set it after loading
        self.action_temperature = cfg.action_temperature
        # what an IDM reads as its future: "model" (the video rollout) or "noise" (pure noise
        # latents: the diagnostic of how much the future matters); `infer(future_images=...)`
        # passes a given future instead (the oracle diagnostic)
        self.future_source = "model"
        self.future_t = cfg.idm.future_t  # flow time a noised-future IDM reads its future at
        self.device = next(actor.parameters()).device
        self._frames: deque[tuple[torch.Tensor, np.ndarray]] = deque(maxlen=cfg.context_frames)

    # infer() takes `prefix` (committed actions the chunk must start with); a backend without it
    # says False here and the policy node falls back to blending alone.
    supports_prefix = True

    @property
    def obs_hz(self) -> float:
        return self.cfg.obs_hz

    @property
    def kind(self) -> str:
        return kind_of_actor(type(self.actor).__name__)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        video_steps: int | None = None, action_steps: int | None = None) -> Policy:
        """Rebuild a policy from an `avdp-train-idm` or `avdp-train-baseline` checkpoint directory
        (the run's `latest/`, or the run folder itself)."""
        from avdp_ros.deploy.backends import checkpoint_dir  # the one run / latest/ rule of every loader

        path = checkpoint_dir(path) or Path(path)  # no checkpoint: load_checkpoint names what is missing
        states, meta = load_checkpoint(path)
        kind = meta.get("kind")
        if kind not in POLICY_KINDS:
            raise CheckpointError(f"checkpoint {path} holds a '{kind}' model; a policy needs one of "
                                  f"{POLICY_KINDS} (train one with avdp-train-idm or avdp-train-baseline)")
        spec = KINDS[kind]
        cfg = PolicyConfig.from_dict(meta["config"])
        tok = Tokenizer(TokenizerConfig.from_dict(cfg.tokenizer))
        load_into(tok, states["tokenizer"], f"{path}: tokenizer")
        actor = getattr(heads, spec.actor)(cfg)
        load_into(actor, states[kind], f"{path}: {kind}")
        video = vnorm = None
        if spec.has_video:
            video, vnorm = VideoModel(cfg), Normalizer(STATE_DIM)
            load_into(video, states["video"], f"{path}: video")
            load_into(vnorm, states["video_state_norm"], f"{path}: video_state_norm")
            video, vnorm = video.to(device), vnorm.to(device)
        return cls(cfg, tok.to(device), actor.to(device), video, vnorm, video_steps, action_steps)

    def reset(self) -> None:
        """Forget the frame history (call at the start of every episode)."""
        self._frames.clear()

    def _check(self, obs: dict) -> None:
        check_observation(obs, self.cfg.cameras)

    @torch.no_grad()
    def observe(self, obs: dict) -> float:
        """Encode and append one observation to the history; returns the tokenizer time (ms)."""
        self._check(obs)
        t0 = time.perf_counter()
        images = torch.cat([self.tokenizer.camera_images(obs[cam], cam) for cam in self.cfg.cameras])  # (cams, 3, S, S)
        latents = self.tokenizer.encode(images).to(self.device)  # (cams, C, h, w)
        state = pose_to_state10(np.asarray(obs["ee_pose"], np.float32)[None],
                                np.asarray([obs["gripper"]], np.float32))[0]  # (10,)
        if not self._frames:  # episode start: the history is padded with the first frame, as in training
            for _ in range(self.cfg.context_frames - 1):
                self._frames.append((latents, state))
        self._frames.append((latents, state))
        return (time.perf_counter() - t0) * 1e3

    def _prefix(self, prefix: np.ndarray, state: torch.Tensor) -> torch.Tensor:
        """(P, 8) robot-unit actions -> (1, P, 10) in the head's normalised space."""
        p = np.asarray(prefix, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 8 or not 0 < len(p) < self.cfg.horizon or not np.all(np.isfinite(p)):
            raise ValueError(f"prefix: {p.shape} array, expected (P, 8) finite actions (pose7 + width) "
                             f"with 0 < P < horizon {self.cfg.horizon}")
        t = torch.from_numpy(p).float().to(self.device)
        absolute = torch.cat([pose7_to_pose9(t[:, :7]), t[:, 7:8]], dim=-1)[None]  # (1, P, 10)
        return self.actor.normalize_actions(absolute, state)

    def _future(self, context: torch.Tensor, instr: torch.Tensor, states: torch.Tensor, noise: dict,
                future_images: dict[str, np.ndarray] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The future latents (1, K, cams, C, h, w) the IDM reads and the video features of the
        clip (1, Fc + K, D) (None when the IDM takes none)."""
        K, shape = self.cfg.future_frames, context.shape[2:]
        vstate = self.video_state_norm.normalize(states)
        if future_images is not None:
            pred = self._encode_future(future_images)
        elif self.future_source == "noise" or (self.actor.noised_future and self.future_t >= 1.0):
            # pure noise: the IDM then plans from the past alone; no rollout to pay for
            pred = noise.get("future")
            pred = torch.randn((1, K) + tuple(shape), device=self.device) if pred is None else pred.to(self.device)
        else:
            return self.video.rollout(context, instr, vstate, k=K, steps=self.video_steps, noise=noise.get("video"))
        feats = (self.video.features(torch.cat([context, pred], dim=1), instr, vstate)
                 if self.cfg.idm.video_feature_dim > 0 else None)
        return pred, feats

    def _encode_future(self, future_images: dict[str, np.ndarray]) -> torch.Tensor:
        K = self.cfg.future_frames
        frames = []
        for cam in self.cfg.cameras:
            imgs = np.asarray(future_images.get(cam)) if cam in future_images else None
            if imgs is None or imgs.ndim != 4 or len(imgs) != K or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
                raise ValueError(f"future_images[{cam!r}]: expected ({K}, H, W, 3) uint8 frames, got "
                                 f"{None if imgs is None else (imgs.shape, imgs.dtype)}")
            frames.append(self.tokenizer.camera_images(imgs, cam))  # (K, 3, S, S), cropped as observations
        images = torch.stack(frames, dim=1).flatten(0, 1)  # (K*cams, 3, S, S)
        return self.tokenizer.encode(images).to(self.device).unflatten(0, (K, len(frames)))[None]

    @torch.no_grad()
    def infer(self, obs: dict, noise: dict[str, torch.Tensor] | None = None,
              return_frames: bool = False, prefix: np.ndarray | None = None,
              future_images: dict[str, np.ndarray] | None = None) -> dict:
        """Plan an action chunk for `obs` (see the module docstring for keys and shapes).

        Args:
            noise: optional fixed noise for determinism: {"video": (1, K, cams, C, h, w),
                "action": (1, H, 10), "future": (1, K, cams, C, h, w) (what a noised-future IDM
                mixes into its future, and the future itself with future_source "noise")}.
            return_frames: also decode the predicted frames (costs a decoder pass).
            prefix: (P, 8) actions in robot units (pose7 + width), P < H, due at t_obs + i / obs_hz:
                what the robot will execute anyway before this chunk can take over. The chunk
                starts with them exactly and continues from them (real-time chunking by inpainting).
            future_images: {camera: (K, H, W, 3) uint8} the frames to read as the future instead of
                the video model's (video policies; the oracle diagnostic of `avdp-eval --future oracle`).
        """
        noise = noise or {}
        t_start = time.perf_counter()
        tok_ms = self.observe(obs)
        context = torch.stack([f for f, _ in self._frames])[None]  # (1, Fc, cams, C, h, w)
        states = torch.from_numpy(np.stack([s for _, s in self._frames]))[None].to(self.device)  # (1, Fc, 10)
        instr = torch.tensor([self.cfg.instruction_index(str(obs.get("instruction", "")))], device=self.device)
        timings = {"tokenizer_ms": tok_ms, "video_ms": 0.0}
        pred = feats = tokens = None
        if self.video is not None:
            t0 = time.perf_counter()
            if self.actor.reads_frames:
                pred, feats = self._future(context, instr, states, noise, future_images)
            elif future_images is not None:
                raise ValueError("this IDM reads video-model tokens, not future frames (idm.future_input "
                                 "'tokens'): future_images do not apply")
            else:  # VPP-style: one pass over the context and pure-noise slots; frames only to show them
                vnoise = noise.get("video")
                if vnoise is None:
                    vnoise = torch.randn((1, self.cfg.future_frames) + tuple(context.shape[2:]), device=self.device)
                vstate = self.video_state_norm.normalize(states)
                tokens = self.video.tokens(context, instr, vstate, vnoise.to(self.device))
                if return_frames:
                    pred, _ = self.video.rollout(context, instr, vstate, steps=self.video_steps, noise=vnoise)
            timings["video_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        prefix_norm = None
        if prefix is not None and len(prefix):
            prefix_norm = self._prefix(prefix, states[:, -1])
        batch = ActionBatch(context=context, state=self.actor.state_norm.normalize(states[:, -1]), instr=instr,
                            future=pred if tokens is None else None, video_tokens=tokens,
                            video_features=feats if self.cfg.idm.video_feature_dim > 0 and feats is not None else None)
        if pred is not None and self.actor.noised_future:
            t = torch.full((1,), float(self.future_t), device=self.device)
            batch = self.actor.noise_future(batch, t, noise.get("future"))
        anoise = noise.get("action")
        if anoise is None:
            anoise = self.action_temperature * torch.randn(1, self.cfg.horizon, ACTION_DIM, device=self.device)
        sample = self.actor.sample(batch, steps=self.action_steps, noise=anoise, prefix=prefix_norm)
        a = self.actor.unnormalize_actions(sample, states[:, -1])  # (1, H, 10) absolute
        pose7 = pose9_to_pose7(a[0, :, :9])  # (H, 7)
        actions = torch.cat([pose7, a[0, :, 9:10]], dim=-1).double().cpu().numpy()  # (H, 8)
        timings["idm_ms"] = (time.perf_counter() - t0) * 1e3
        out = {"actions": actions, "timings": timings}
        if return_frames and pred is not None:
            imgs = self.tokenizer.decode(pred[0].flatten(0, 1))  # (K*cams, 3, S, S)
            imgs = (imgs.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
            out["predicted_frames"] = imgs.reshape(pred.shape[1], pred.shape[2], *imgs.shape[1:])
        timings["total_ms"] = (time.perf_counter() - t_start) * 1e3
        return out
