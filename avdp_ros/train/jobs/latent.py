"""`LatentJob`: the part shared by the jobs that train on cached latents (video, idm, baseline)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from avdp_ros.model.tokenizer import Tokenizer
from avdp_ros.train import engine
from avdp_ros.train.augment import AUGMENT_PRESETS
from avdp_ros.train.data import LatentSetup, data_record
from avdp_ros.train.jobs.base import Job
from avdp_ros.train.sources import frozen_tokenizer, load_tokenizer


class LatentJob(Job):
    """A job whose model reads tokenizer latents; `build` sets `self.setup` (latent_setup)."""

    defaults = engine.TrainConfig(steps=5000, batch_size=64, lr=3e-4, val_every=500, ckpt_every=500)
    setup: LatentSetup

    def tokenizer(self, args: argparse.Namespace, src_cfg: dict | None, states: dict[str, Any],
                  what: str = "tokenizer") -> Tokenizer:
        """The frozen tokenizer: the source checkpoint's (resume / init / video model), else --tokenizer."""
        if src_cfg is not None:
            return frozen_tokenizer(src_cfg["tokenizer"], states["tokenizer"], self.device, what)
        if getattr(args, "tokenizer", None):
            return load_tokenizer(args.tokenizer, self.device)
        raise SystemExit("--tokenizer is required (the tokenizer checkpoint directory)")

    def add_tokenizer_and_init_args(self, p: argparse.ArgumentParser) -> None:
        """--tokenizer (a fresh model) and --init (fine-tune one of this kind, optionally onto --tokenizer)."""
        p.add_argument("--tokenizer", help="tokenizer checkpoint directory, or a policy / video checkpoint whose "
                                           "tokenizer to use (required unless --resume or --init)")
        p.add_argument("--init", metavar="CHECKPOINT",
                       help=f"start from this {self.kind} checkpoint's weights and config (a fine-tune with a new "
                            "schedule); with --tokenizer, on that tokenizer's latents (same latent shape)")

    def add_augment_args(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--augment", choices=sorted(AUGMENT_PRESETS), default="none",
                       help="train on --views augmented copies of every episode's latents as well as the clean ones "
                            "(train/augment.py, encoded once into the latent cache; validation stays clean; "
                            "default %(default)s)")
        p.add_argument("--views", type=int, default=4, metavar="V",
                       help="with --augment: latent views per frame, the clean one included (default %(default)s)")

    def check_augment_args(self, args: argparse.Namespace) -> None:
        if args.augment != "none" and args.views < 2:
            raise SystemExit(f"--views {args.views}: expected >= 2 with --augment (view 0 is the clean frame)")

    def config(self) -> dict[str, Any]:
        return self.setup.cfg.to_dict()

    def extra(self) -> dict[str, Any]:
        a = self.args
        aug = ({"preset": a.augment, "views": a.views, **AUGMENT_PRESETS[a.augment].to_dict()}
               if a is not None and getattr(a, "augment", "none") != "none" else None)
        return {"data": data_record(self.setup.roots), "val_episodes": self.setup.val_keys, "augment": aug}

    @property
    def tok(self) -> torch.nn.Module:
        return self.setup.tokenizer
