"""avdp-train-tokenizer: the AutoencoderKL image tokenizer; its latent_scale is set at the end.

`--target-look nominal --init REFERENCE` trains an appearance-invariant encoder instead: on pairs
of frames recorded with `avdp-dagger --nominal-pairs` (a frame in some scene, the same state as
the nominal scene shows it), the encoder learns to give any look REFERENCE's latents of the
nominal frame (MSE in scaled latent space), under colour jitter and shift (`--augment`). The
decoder and latent_scale stay REFERENCE's, frozen, so a policy trained on REFERENCE's latents
reads the new encoder's unchanged (`avdp-train-baseline --init POLICY --tokenizer NEW`). The
sim's randomised scenes teach what a real lab can only approximate with augmentation: the
"Randomized-to-Canonical" idea (James et al., RCAN, CVPR 2019), in latent space.
`--camera-weight` draws one camera's pairs more often and `--object-weight` weighs the latents over
the cube and the target more; neither closed the wrist camera's gap on held-out tables
(docs/appearance.md), so the shipped encoder uses neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avdp_ros.images import check_crop
from avdp_ros.model.checkpoint import load_into
from avdp_ros.model.tokenizer import (
    TOKENIZER_PRESETS,
    Tokenizer,
    TokenizerConfig,
    calibrate_latent_scale,
    checkpoint_tokenizer,
)
from avdp_ros.train import engine
from avdp_ros.train.augment import AUGMENT_PRESETS, augment
from avdp_ros.train.data import ImageSet, PairSet, camera_indices, check_roots, data_record, split_episodes
from avdp_ros.train.jobs.base import Job, n_params
from avdp_ros.train.metrics import object_l1, object_latents, psnr, ssim
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


def parse_camera_weights(p: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, int]:
    """--camera-weight CAMERA=W items -> {camera: W} (argparse's error on a bad one)."""
    weights = {}
    for item in items:
        cam, _, w = item.partition("=")
        if not cam or not w.isdigit() or int(w) < 1:
            p.error(f"--camera-weight {item!r}: expected CAMERA=W, W an integer >= 1 (e.g. wrist=3)")
        weights[cam] = int(w)
    return weights


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
        p.add_argument("--camera-weight", action="append", default=[], metavar="CAMERA=W",
                       help="draw this camera's images W times per epoch (an integer >= 1; default 1 each), "
                            "e.g. wrist=3 where one camera's encoding is the weaker (docs/appearance.md); "
                            "repeatable")
        p.add_argument("--init", metavar="CHECKPOINT",
                       help="start from this tokenizer's weights (fine-tuning, e.g. for a new --crop), or from the "
                            "tokenizer inside a policy checkpoint (e.g. models/avdp_default)")
        p.add_argument("--augment", choices=sorted(AUGMENT_PRESETS), default="none",
                       help="random colour jitter and shift of the training images (train/augment.py); "
                            "validation and inference see the images unchanged (default %(default)s)")
        p.add_argument("--clean-fraction", type=float, default=0.0, metavar="F",
                       help="leave this fraction of the training images unaugmented, so the model is also exact on "
                            "images as the cameras give them (default %(default)s: all augmented)")
        p.add_argument("--target-look", choices=("nominal",), default=None,
                       help="train the encoder only, to map every look to --init's latents of the same state in "
                            "the nominal scene (data from avdp-dagger --nominal-pairs); decoder and latent_scale "
                            "stay --init's")
        p.add_argument("--object-weight", type=float, default=0.0, metavar="K",
                       help="with --target-look: latents over the task's objects in the nominal view (cube, "
                            "target: train/metrics.object_mask) weigh 1 + K in the loss, the rest 1 "
                            "(default %(default)s: all alike)")

    def check_args(self, args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
        self.crops = parse_crops(p, args.crop)
        self.camera_weights = parse_camera_weights(p, args.camera_weight)
        self.augment = AUGMENT_PRESETS[args.augment]
        # its own stream: the same --seed gives the same augmentations in a run from scratch
        self.augment_gen = torch.Generator().manual_seed(args.seed + 104729)
        self.target_look = args.target_look
        if not 0.0 <= args.clean_fraction <= 1.0:
            p.error(f"--clean-fraction {args.clean_fraction}: expected in [0, 1]")
        self.clean_fraction = args.clean_fraction
        if not (math.isfinite(args.object_weight) and args.object_weight >= 0.0):
            p.error(f"--object-weight {args.object_weight}: expected a number >= 0")
        if args.object_weight and not args.target_look:
            p.error("--object-weight applies to --target-look only (it weighs the latents of the nominal view)")
        self.object_weight = args.object_weight
        if args.target_look and not (args.init or args.resume):
            p.error("--target-look needs --init REFERENCE: the tokenizer (or policy) whose latents the encoder "
                    "learns to reproduce")
        if args.target_look and (args.crop or args.kl_weight is not None):
            p.error("--target-look keeps --init's config: --crop and --kl-weight do not apply")

    def build(self, args: argparse.Namespace) -> None:
        crops, out = self.crops, Path(args.out)
        self.roots, cameras = check_roots(args.data)
        if set(crops) - set(cameras):
            raise SystemExit(f"--crop names cameras {sorted(set(crops) - set(cameras))}; the data has {cameras}")
        if set(self.camera_weights) - set(cameras):
            raise SystemExit(f"--camera-weight names cameras {sorted(set(self.camera_weights) - set(cameras))}; "
                             f"the data has {cameras}")
        if args.resume:
            states, meta = resume_states(out, "tokenizer")
            tok = Tokenizer(TokenizerConfig.from_dict(meta["config"]))
            load_into(tok, states["tokenizer"], f"{out / engine.LATEST}")
            if crops or (args.init and not args.target_look):
                raise SystemExit("--resume continues the run as it was: --crop / --init do not apply "
                                 "(with --target-look, --init may name where the reference is now)")
            reference = meta.get("extra", {}).get("target_look")
            if bool(reference) != bool(args.target_look):
                raise SystemExit(f"--resume: the run at {out} was started {'with' if reference else 'without'} "
                                 "--target-look; give the same flags")
            if reference:  # it may have moved (a shipped model replaced since): --init names where it is now
                self.reference = self._reference(args.init or reference["reference"],
                                                 reference["reference_fingerprint"])
        else:
            if args.init:
                init = self._checkpoint_tokenizer(args.init)
                tcfg = dataclasses.replace(init.config)
                if args.target_look:
                    self.reference = self._reference(args.init)
            else:
                tcfg = dataclasses.replace(TOKENIZER_PRESETS[args.preset])
            if args.kl_weight is not None:
                tcfg.kl_weight = args.kl_weight
            tcfg.crops = {**tcfg.crops, **crops}
            tok = Tokenizer(tcfg)
            if args.init:
                tok.load_state_dict(init.state_dict())
        train_keys, self.val_keys = split_episodes(self.roots, args)
        S = tok.config.image_size
        self.gen = torch.Generator().manual_seed(args.seed)
        self.model = tok
        if args.target_look:
            self._build_pairs(tok, train_keys, args.frame_stride)
        else:
            self.images = ImageSet(self.roots, set(train_keys), S, args.frame_stride, tok.config.crops)
            val_set = ImageSet(self.roots, set(self.val_keys), S, max(args.frame_stride, 1), tok.config.crops)
            self.val_images = val_set.images[torch.randperm(len(val_set), generator=self.gen)[:VAL_IMAGES]]
            self.log(f"tokenizer {args.preset}: {n_params(tok)}, latents {tok.config.latent_shape}; "
                     f"{len(self.images)} train / {len(val_set)} val images; device {self.device}")
            self.dataset = self.images
        if self.camera_weights:  # validation stays unweighted: it measures every camera as before
            idx = camera_indices(self.dataset.camera, self.camera_weights)
            self.log(f"cameras weighted {self.camera_weights}: {len(idx)} draws per epoch for "
                     f"{len(self.dataset)} images")
            self.dataset = torch.utils.data.Subset(self.dataset, idx)

    # -- --target-look: an encoder that maps every look to the reference's nominal latents ---------

    def _reference(self, path: str, fingerprint: str | None = None) -> Tokenizer:
        ref = self._checkpoint_tokenizer(path).requires_grad_(False)
        if fingerprint is not None and ref.fingerprint() != fingerprint:
            raise SystemExit(f"--resume: the reference tokenizer at {path} changed since the run started "
                             "(its weights' fingerprint differs); if it moved, name where it is now with --init, "
                             "else start a new run")
        self.reference_path = str(path)
        return ref.to(self.device).eval()

    @staticmethod
    def _checkpoint_tokenizer(path: str) -> Tokenizer:
        try:
            return checkpoint_tokenizer(path)
        except ValueError as err:
            raise SystemExit(f"--init {err}") from err

    def _build_pairs(self, tok: Tokenizer, train_keys: list[str], stride: int) -> None:
        S, crops = tok.config.image_size, tok.config.crops
        # The decoder and the latent scale are the reference's and stay so: the latents keep their meaning.
        for module in (tok.vae.decoder, tok.vae.post_quant_conv):
            module.requires_grad_(False)
        pairs = self.dataset = PairSet(self.roots, set(train_keys), S, stride, crops)
        val = PairSet(self.roots, set(self.val_keys), S, max(stride, 1), crops)
        if len(pairs) == 0:
            raise SystemExit("--target-look nominal: no episode of --data has nominal pairs (<camera>_nominal.npy); "
                             "record them with avdp-dagger --nominal-pairs")
        self.target_z = self._encode_reference(pairs.targets)
        hw = self.reference.config.latent_shape[1:]
        self.target_w = 1.0 + self.object_weight * object_latents(pairs.targets, hw)
        # validation: the frames that are not their own nominal view (those are what the encoder must undo)
        looks = (val.inputs != val.targets[val.target_index]).flatten(1).any(1).nonzero().flatten()
        pick = looks[torch.randperm(len(looks), generator=self.gen)[:VAL_IMAGES]]
        self.val_inputs, self.val_targets = val.inputs[pick], val.targets[val.target_index[pick]]
        self.val_z = self._encode_reference(self.val_targets)
        self.val_objects = object_latents(self.val_targets, hw).to(self.device)
        self.val_object_l1_reference = float("nan")
        if len(self.val_targets):
            with torch.no_grad():  # the best the frozen decoder can do: the reference's own reconstruction
                y = self.val_targets.to(self.device).float() / 255.0
                ref = torch.cat([self.reference.decode(self.val_z[i:i + 64]) for i in range(0, len(y), 64)])
                self.val_object_l1_reference = object_l1(ref, y).nanmean().item()
        self.log(f"appearance-invariant encoder (--target-look nominal, reference {self.reference_path}): "
                 f"{len(pairs)} train pairs ({len(pairs.targets)} nominal targets) / {len(pick)} "
                 f"val pairs; {pairs.skipped} train episodes without pairs skipped; device {self.device}")

    @torch.no_grad()
    def _encode_reference(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            return torch.zeros(0, *self.reference.config.latent_shape, device=self.device)
        return torch.cat([self.reference.encode(images[i:i + 256].to(self.device).float() / 255.0)
                          for i in range(0, len(images), 256)])

    def _pair_loss(self, model: Tokenizer, batch):
        x, idx = batch
        z = model.encode(self._augment(x))
        err = (z - self.target_z[idx].to(z.device)) ** 2
        w = self.target_w[idx].to(z.device).expand_as(err)  # a weighted mean: the loss keeps its scale
        loss = (w * err).sum() / w.sum()
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def _pair_validate(self, model: Tokenizer) -> dict[str, float]:
        x = self.val_inputs.to(self.device).float() / 255.0
        y = self.val_targets.to(self.device).float() / 255.0
        z = torch.cat([model.encode(x[i:i + 64]) for i in range(0, len(x), 64)])
        rec = torch.cat([model.decode(z[i:i + 64]) for i in range(0, len(z), 64)])
        err = (z - self.val_z.to(z.device)) ** 2
        objects = self.val_objects.expand_as(err)  # the latents over the cube and the target
        return {"latent_mse": err.mean().item(), "psnr": psnr(rec, y).mean().item(),
                "latent_mse_objects": (err * objects).sum().item() / max(objects.sum().item(), 1.0),
                "object_l1": object_l1(rec, y).nanmean().item(),
                "object_l1_reference": self.val_object_l1_reference}

    # -- the job's parts ---------------------------------------------------------------------------

    def loss(self, model: Tokenizer, batch: torch.Tensor):
        if self.target_look:
            return self._pair_loss(model, batch)
        return model.loss(self._augment(batch))

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float in [0, 1], augmented except a `clean_fraction` of them."""
        x = images.float() / 255.0
        y = augment(x, self.augment, self.augment_gen)
        if self.clean_fraction <= 0.0 or y is x:
            return y
        clean = torch.rand(len(x), generator=self.augment_gen) < self.clean_fraction
        return torch.where(clean.view(-1, 1, 1, 1).to(x.device), x, y)

    def validate(self, model: Tokenizer, step: int) -> dict[str, float]:
        if self.target_look:
            return self._pair_validate(model) if len(self.val_inputs) else {}
        if len(self.val_images) == 0:
            return {}
        x = self.val_images.to(self.device).float() / 255.0
        rec = torch.cat([model.reconstruct(x[i:i + 64]) for i in range(0, len(x), 64)])
        return {"psnr": psnr(rec, x).mean().item(), "ssim": ssim(rec, x).mean().item(),
                "object_l1": object_l1(rec, x).nanmean().item()}

    def finalize(self, model: Tokenizer) -> None:
        if self.target_look:
            return  # the latent scale is the reference's: the latents must keep their meaning
        images = self.images.images
        idx = torch.randperm(len(images), generator=self.gen)[:CALIB_IMAGES]
        batches = (images[idx[i:i + 64]].to(self.device).float() / 255.0 for i in range(0, len(idx), 64))
        scale = calibrate_latent_scale(model, batches)
        print(f"latent_scale = {scale:.4f}", file=sys.stderr)

    def modules(self, model: Tokenizer) -> dict[str, torch.nn.Module]:
        return {"tokenizer": model}

    def save(self, model: Tokenizer, path: Path, extra: dict[str, Any]) -> None:
        # Tokenizer.save adds the weights' fingerprint, which names the latent caches
        if self.target_look:
            extra = dict(extra, target_look={"look": self.target_look, "reference": self.reference_path,
                                             "reference_fingerprint": self.reference.fingerprint()})
        model.save(path, dict(extra, data=data_record(self.roots), val_episodes=self.val_keys,
                              augment=dict(self.augment.to_dict(), clean_fraction=self.clean_fraction),
                              camera_weight=self.camera_weights, object_weight=self.object_weight),
                   data_manifest=self.roots[0] / "manifest.json")

