"""avdp-train-video: the autoregressive latent video model (diffusion forcing) on every episode,
action-labelled or not."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from avdp_ros.model.checkpoint import load_into
from avdp_ros.model.config import STATE_DIM
from avdp_ros.model.idm import Normalizer
from avdp_ros.model.video import VideoModel
from avdp_ros.train import engine
from avdp_ros.train.data import decode_frames, future_images, latent_setup, stack_windows, val_indices
from avdp_ros.train.jobs.base import n_params
from avdp_ros.train.jobs.latent import LatentJob
from avdp_ros.train.metrics import psnr, ssim
from avdp_ros.train.plots import save_comparison_gif
from avdp_ros.train.sources import init_source, resume_config, resume_states

GIF_NAME = "rollout.gif"


def clip_loss(video: VideoModel, state_norm: Normalizer, b: dict[str, torch.Tensor],
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """VideoModel.loss on a training window's clip: its context and future latents, the proprio
    of every frame normalised with the statistics the model trains under."""
    latents = torch.cat([b["context"], b["future"]], dim=1)  # (B, Fc+K, cams, C, h, w)
    state = state_norm.normalize(b["states"])
    p = video.cfg.video.rollout_prob if video.training else 0.0
    if p > 0 and float(torch.rand((), generator=generator)) < p:
        return video.rollout_loss(latents, b["instr"], state, generator=generator)
    loss, logs = video.loss(latents, b["instr"], state, generator=generator)
    return loss, (dict(logs, rollout_frames=0) if p > 0 else logs)  # logged as a mean: frames per step


class VideoJob(LatentJob):
    kind = "video"
    description = "Train the latent video model (diffusion forcing)."

    def add_args(self, p: argparse.ArgumentParser) -> None:
        self.add_tokenizer_and_init_args(p)
        self.add_augment_args(p)
        p.add_argument("--rollout-steps", type=int, default=None, help="Euler steps per frame in validation")

    def check_args(self, args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
        self.check_augment_args(args)
        if args.resume and args.init:
            raise SystemExit("--resume continues the run as it was: --init does not apply")

    def build(self, args: argparse.Namespace) -> None:
        out = Path(args.out)
        src_cfg, states, what = None, {}, ""
        if args.resume:
            states, meta = resume_states(out, "video")
            src_cfg, what = resume_config(args, meta["config"]), f"{out / engine.LATEST}"
        elif args.init:
            (src_cfg, states), what = init_source(args, "video"), f"--init {args.init}"
        tok = self.tokenizer(args, src_cfg, states, f"{what} tokenizer")
        s = self.setup = latent_setup(args, self.info, tok, src_cfg, require_actions=False)
        self.roots, self.dataset = s.roots, s.train
        model = self.model = VideoModel(s.cfg)
        self.state_norm = Normalizer(STATE_DIM).fit(torch.from_numpy(s.train.state_rows()))
        if states:  # the weights learned under the source's state statistics keep them
            load_into(model, states["video"], f"{what} video")
            load_into(self.state_norm, states["state_norm"], f"{what} state_norm")
        self.state_norm.to(self.device)
        self.log(f"video model: {n_params(model)}, device {self.device}")
        self.val_idx = val_indices(s.val, args.seed)
        self.real = future_images(s, self.val_idx, s.cfg.future_frames) if self.val_idx else None  # (N,K,cams,3,S,S)

    def loss(self, m: VideoModel, b: dict[str, torch.Tensor]):
        loss, logs = clip_loss(m, self.state_norm, b)
        return loss, dict(logs, loss=loss.item())

    def validate(self, m: VideoModel, step: int) -> dict[str, float]:
        if not self.val_idx:
            return {}
        s, args, K, real = self.setup, self.args, self.setup.cfg.future_frames, self.real
        b = stack_windows(s.val, self.val_idx, self.device)
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        noise = torch.randn((len(self.val_idx), K) + b["context"].shape[2:], generator=gen).to(self.device)
        state = self.state_norm.normalize(b["states"][:, :s.cfg.context_frames])
        pred, _ = m.rollout(b["context"], b["instr"], state, k=K, steps=args.rollout_steps, noise=noise)
        pred_img = decode_frames(self.tok, pred).cpu()  # (N, K, cams, 3, S, S)
        recon_img = decode_frames(self.tok, b["future"]).cpu()
        metrics = {"latent_mse": (pred - b["future"]).pow(2).mean().item()}
        for j in range(K):
            a, r = pred_img[:, j].flatten(0, 1), real[:, j].flatten(0, 1)
            metrics[f"psnr_{j + 1}"] = psnr(a, r).mean().item()
            metrics[f"ssim_{j + 1}"] = ssim(a, r).mean().item()
        metrics["psnr_tokenizer"] = psnr(recon_img.flatten(0, 2), real.flatten(0, 2)).mean().item()
        save_comparison_gif(real[0], pred_img[0], Path(args.out) / GIF_NAME)
        return metrics

    def modules(self, m: VideoModel) -> dict[str, torch.nn.Module]:
        return {"video": m, "state_norm": self.state_norm, "tokenizer": self.tok}
