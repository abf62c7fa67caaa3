"""`Job`: what every training run does, written once; each model kind fills in its own parts.

A job subclass names its `kind` (an entry of `avdp_ros.model.kinds.KINDS`) and provides
`add_args` (its CLI flags), `build` (model, data, normalisers), `loss`, `validate` and `modules`
(what its checkpoint holds). `Job.main` is the shared skeleton: parse, join the process group,
seed, build, run the loop (`train.engine.train`), clean up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from avdp_ros.model.checkpoint import save_checkpoint
from avdp_ros.model.kinds import KINDS, KindSpec
from avdp_ros.train import engine
from avdp_ros.train.data import data_record


class Job:
    """One model kind's training run. Subclasses set `kind`, `description` and `defaults`."""

    kind: str = ""
    description: str = ""
    defaults = engine.TrainConfig()  # the CLI's default schedule for this kind

    def __init__(self) -> None:
        self.args: argparse.Namespace | None = None
        self.device = torch.device("cpu")
        self.info = engine.Dist()
        self.roots: list[Path] = []  # dataset roots, recorded in the checkpoint
        self.model: nn.Module | None = None
        self.dataset: torch.utils.data.Dataset | None = None

    @property
    def spec(self) -> KindSpec:
        return KINDS[self.kind]

    # -- what a kind provides ----------------------------------------------------------------

    def add_args(self, p: argparse.ArgumentParser) -> None:
        """Flags of this kind only (the common ones are in `parser`)."""

    def check_args(self, args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
        """Refuse bad flag combinations before anything is loaded."""

    def build(self, args: argparse.Namespace) -> None:
        """Load or create everything the run needs; set `self.model`, `self.dataset`, `self.roots`."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        return {}

    def modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules the checkpoint stores, by name (`spec.modules`)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The model config stored in the checkpoint."""
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        """Run facts stored beside the weights (data, split)."""
        return {"data": data_record(self.roots)}

    finalize = None  # optional (model) -> None, run on the shipped weights before the last checkpoint

    # -- shared by every kind ----------------------------------------------------------------

    def save(self, model: nn.Module, path: Path, extra: dict[str, Any]) -> None:
        mods = self.modules(model)
        if set(mods) != set(self.spec.modules):  # the registry is what loaders trust
            raise RuntimeError(f"{self.kind} job saves modules {sorted(mods)}; KINDS says "
                               f"{sorted(self.spec.modules)}")
        save_checkpoint(path, self.kind, mods, self.config(), dict(extra, **self.extra()),
                        data_manifest=self.roots[0] / "manifest.json")

    def parser(self) -> argparse.ArgumentParser:
        d = self.defaults
        p = argparse.ArgumentParser(prog=self.spec.train_command, description=self.description)
        p.add_argument("--data", nargs="+", required=True, help="converted dataset roots (avdp-convert output)")
        p.add_argument("--out", required=True, help="run directory (checkpoints, history, plots)")
        p.add_argument("--preset", choices=("tiny", "base"), default="base",
                       help="model size (default %(default)s)")
        p.add_argument("--steps", type=int, default=d.steps, help="total steps (default %(default)s)")
        p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default %(default)s)")
        p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
        p.add_argument("--warmup-steps", type=int, default=None, help="default: min(100, steps // 10)")
        p.add_argument("--ema", type=float, default=d.ema_decay, metavar="DECAY",
                       help="validate and save an exponential moving average of the weights with this decay, "
                            "e.g. 0.999 (default %(default)s = off)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
        p.add_argument("--seed", type=int, default=0, help="seeds init, data order and the episode split")
        p.add_argument("--val-fraction", type=float, default=0.1, help="held-out episodes (default %(default)s)")
        p.add_argument("--log-every", type=int, default=d.log_every)
        p.add_argument("--val-every", type=int, default=d.val_every)
        p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
        p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default %(default)s)")
        p.add_argument("--threads", type=int, default=None,
                       help="CPU intra-op threads (torch.set_num_threads); default: torch's choice")
        p.add_argument("--resume", action="store_true", help="continue from <out>/latest")
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars (latent caching, training): for logs")
        p.add_argument("--override", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="edit the preset's config, e.g. --override idm.patch_size=2 (repeatable); with "
                            "--resume or --init only the fields of train/sources.py RESUME_OVERRIDABLE (sampling "
                            "and training noise levels, e.g. video.context_noise)")
        self.add_args(p)
        return p

    def main(self, argv: Sequence[str] | None = None) -> int:
        p = self.parser()
        args = self.args = p.parse_args(argv)
        self.check_args(args, p)
        self.info, self.device = engine.setup_distributed(args.device, args.threads)
        try:
            engine.seed_everything(args.seed + self.info.rank)
            cfg = train_config(args)
            self.build(args)
            run = engine.Run(out=Path(args.out), kind=self.kind, model=self.model, loss_fn=self.loss,
                             dataset=self.dataset, cfg=cfg, save_fn=self.save, validate_fn=self.validate,
                             finalize_fn=self.finalize)
            last = engine.train(run, self.info, self.device, resume=args.resume, progress=not args.no_progress)
            if self.info.is_main:
                print(json.dumps(last), file=sys.stderr)
        finally:
            engine.cleanup_distributed()
        return 0

    def log(self, text: str) -> None:
        if self.info.is_main:
            print(text, file=sys.stderr)


def train_config(args: argparse.Namespace) -> engine.TrainConfig:
    warmup = args.warmup_steps if args.warmup_steps is not None else min(100, max(args.steps // 10, 1))
    try:
        return engine.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=warmup,
                                  log_every=args.log_every, val_every=args.val_every,
                                  ckpt_every=args.ckpt_every, seed=args.seed, device=args.device,
                                  num_workers=args.num_workers, ema_decay=args.ema)
    except ValueError as e:  # TrainConfig validates only ema_decay among the CLI's values
        raise SystemExit(f"--ema: {e}") from None


def n_params(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params"
