"""avdp-train-tokenizer: the AutoencoderKL image tokenizer; its latent_scale is set at the end."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avdp_ros.images import check_crop
from avdp_ros.model.checkpoint import load_checkpoint, load_into
from avdp_ros.model.tokenizer import TOKENIZER_PRESETS, Tokenizer, TokenizerConfig, calibrate_latent_scale
from avdp_ros.train import engine
from avdp_ros.train.augment import AUGMENT_PRESETS, augment
from avdp_ros.train.data import ImageSet, check_roots, data_record, split_episodes
from avdp_ros.train.jobs.base import Job, n_params
from avdp_ros.train.metrics import object_l1, psnr, ssim
from avdp_ros.train.sources import resume_states

VAL_IMAGES = 256      # validation images per evaluation
CALIB_IMAGES = 2048   # training images used to compute the latent_scale


def parse_crops(p: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """--crop CAMERA=TOP,LEFT,HEIGHT,WIDTH items -> {camera: box} (argparse's error on a bad one)."""
    crops = {}
    for item in items:
        cam, sep, box = item.partition("=")
        try:
            if not sep or not cam:
                raise ValueError("expected CAMERA=TOP,LEFT,HEIGHT,WIDTH")
            crops[cam] = check_crop(box.split(","), f"--crop {cam}")
        except ValueError as err:
            p.error(f"--crop {item!r}: {err}")
    return crops


class TokenizerJob(Job):
    kind = "tokenizer"
    description = "Train the image tokenizer (AutoencoderKL)."
    defaults = engine.TrainConfig(steps=2000, batch_size=32, lr=1e-3)

    def add_args(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--kl-weight", type=float, default=None, help="override the preset's kl_weight")
        p.add_argument("--frame-stride", type=int, default=1, help="use every N-th frame (default %(default)s)")
        p.add_argument("--crop", action="append", default=[], metavar="CAMERA=TOP,LEFT,HEIGHT,WIDTH",
                       help="region of interest of a camera, fractions of its frame, cut out before the resize "
                            "(e.g. camera=0.41,0.2,0.5,0.5); repeatable; stored in the tokenizer's config")
        p.add_argument("--init", metavar="CHECKPOINT",
                       help="start from this tokenizer's weights (fine-tuning, e.g. for a new --crop), or from the "
                            "tokenizer inside a policy checkpoint (e.g. models/avdp_default)")
        p.add_argument("--augment", choices=sorted(AUGMENT_PRESETS), default="none",
                       help="random colour jitter and shift of the training images (train/augment.py); "
                            "validation and inference see the images unchanged (default %(default)s)")

    def check_args(self, args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
        self.crops = parse_crops(p, args.crop)
        self.augment = AUGMENT_PRESETS[args.augment]
        # its own stream: the same --seed gives the same augmentations in a run from scratch
        self.augment_gen = torch.Generator().manual_seed(args.seed + 104729)

    def build(self, args: argparse.Namespace) -> None:
        crops, out = self.crops, Path(args.out)
        self.roots, cameras = check_roots(args.data)
        if set(crops) - set(cameras):
            raise SystemExit(f"--crop names cameras {sorted(set(crops) - set(cameras))}; the data has {cameras}")
        if args.resume:
            states, meta = resume_states(out, "tokenizer")
            tok = Tokenizer(TokenizerConfig.from_dict(meta["config"]))
            load_into(tok, states["tokenizer"], f"{out / engine.LATEST}")
            if crops or args.init:
                raise SystemExit("--resume continues the run as it was: --crop / --init do not apply")
        else:
            if args.init:
                init_states, init_meta = load_checkpoint(args.init)
                # a tokenizer checkpoint, or a policy's (every latent kind stores the tokenizer it reads)
                tcfg_dict = init_meta["config"] if init_meta["kind"] == "tokenizer" else init_meta["config"].get(
                    "tokenizer")
                if tcfg_dict is None or "tokenizer" not in init_states:
                    raise SystemExit(f"--init {args.init}: a {init_meta['kind']} checkpoint without a tokenizer")
                tcfg = TokenizerConfig.from_dict(tcfg_dict)
            else:
                tcfg = dataclasses.replace(TOKENIZER_PRESETS[args.preset])
            if args.kl_weight is not None:
                tcfg.kl_weight = args.kl_weight
            tcfg.crops = {**tcfg.crops, **crops}
            tok = Tokenizer(tcfg)
            if args.init:
                load_into(tok, init_states["tokenizer"], f"--init {args.init}")
        train_keys, self.val_keys = split_episodes(self.roots, args)
        S = tok.config.image_size
        self.dataset = ImageSet(self.roots, set(train_keys), S, args.frame_stride, tok.config.crops)
        val_set = ImageSet(self.roots, set(self.val_keys), S, max(args.frame_stride, 1), tok.config.crops)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.val_images = val_set.images[torch.randperm(len(val_set), generator=self.gen)[:VAL_IMAGES]]
        self.model = tok
        self.log(f"tokenizer {args.preset}: {n_params(tok)}, latents {tok.config.latent_shape}; "
                 f"{len(self.dataset)} train / {len(val_set)} val images; device {self.device}")

    def loss(self, model: Tokenizer, batch: torch.Tensor):
        return model.loss(augment(batch.float() / 255.0, self.augment, self.augment_gen))

    def validate(self, model: Tokenizer, step: int) -> dict[str, float]:
        if len(self.val_images) == 0:
            return {}
        x = self.val_images.to(self.device).float() / 255.0
        rec = torch.cat([model.reconstruct(x[i:i + 64]) for i in range(0, len(x), 64)])
        return {"psnr": psnr(rec, x).mean().item(), "ssim": ssim(rec, x).mean().item(),
                "object_l1": object_l1(rec, x).nanmean().item()}

    def finalize(self, model: Tokenizer) -> None:
        images = self.dataset.images
        idx = torch.randperm(len(images), generator=self.gen)[:CALIB_IMAGES]
        batches = (images[idx[i:i + 64]].to(self.device).float() / 255.0 for i in range(0, len(idx), 64))
        scale = calibrate_latent_scale(model, batches)
        print(f"latent_scale = {scale:.4f}", file=sys.stderr)

    def modules(self, model: Tokenizer) -> dict[str, torch.nn.Module]:
        return {"tokenizer": model}

    def save(self, model: Tokenizer, path: Path, extra: dict[str, Any]) -> None:
        # Tokenizer.save adds the weights' fingerprint, which names the latent caches
        model.save(path, dict(extra, data=data_record(self.roots), val_episodes=self.val_keys,
                              augment=self.augment.to_dict()),
                   data_manifest=self.roots[0] / "manifest.json")
