"""Image tokenizer (diffusers `AutoencoderKL`): config, presets, the model and its latent scale.

`latent_scale` (1 / std of the unscaled posterior means on the training set) is computed once
after training by `calibrate_latent_scale`, stored in `TokenizerConfig` (hence in the checkpoint)
and applied only inside `Tokenizer.encode` / `Tokenizer.decode`. No other module multiplies by it.
The latent cache that training reads is `avdp_ros/data/latents.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avdp_ros.images import check_crop, crop_box
from avdp_ros.model.checkpoint import load_checkpoint, load_into, save_checkpoint
from avdp_ros.model.config import tokenizer_downsample, tokenizer_latent_shape

CHECKPOINT_KIND = "tokenizer"


@dataclass
class TokenizerConfig:
    image_size: int = 64  # square input side S; frames are resized to (S, S) before encoding
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)  # one block per level; 2x down between levels
    layers_per_block: int = 1
    norm_num_groups: int = 8  # must divide every entry of block_out_channels
    latent_scale: float = 1.0  # 1 / std of posterior means on the training set (calibrate_latent_scale)
    kl_weight: float = 1e-6  # KL term weight; small: we want a near-deterministic autoencoder
    recon_loss: str = "l1"  # "l1" or "mse"
    mid_attention: bool = True  # self-attention in the bottleneck (cheap at 8x8)
    # camera name -> (top, left, height, width) fractions of the frame cut out before the resize: a
    # region of interest, so the workspace gets the tokenizer's pixels instead of walls and sky
    # (a wide scene camera shows a 4 cm cube as 2-3 px at 64x64). Cameras not named: whole frame.
    crops: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if not self.block_out_channels:
            raise ValueError("TokenizerConfig.block_out_channels: expected at least one level")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"TokenizerConfig.norm_num_groups={self.norm_num_groups} must divide every "
                             f"block_out_channels entry; {bad} do not")
        if self.image_size % self.downsample:
            raise ValueError(f"TokenizerConfig.image_size={self.image_size}: expected a multiple of the "
                             f"downsampling factor {self.downsample}")
        if self.recon_loss not in ("l1", "mse"):
            raise ValueError(f"TokenizerConfig.recon_loss={self.recon_loss!r}: expected 'l1' or 'mse'")
        if not self.latent_scale > 0:
            raise ValueError(f"TokenizerConfig.latent_scale={self.latent_scale}: expected > 0")
        if not isinstance(self.crops, dict):
            raise ValueError(f"TokenizerConfig.crops={self.crops!r}: expected {{camera: [top, left, height, width]}}")
        self.crops = {str(cam): check_crop(box, f"TokenizerConfig.crops[{cam!r}]") for cam, box in self.crops.items()}

    @property
    def downsample(self) -> int:
        return tokenizer_downsample(len(self.block_out_channels))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one encoded image."""
        return tokenizer_latent_shape(self.image_size, self.latent_channels, len(self.block_out_channels))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        d["crops"] = {cam: list(box) for cam, box in self.crops.items()}
        if not d["crops"]:
            del d["crops"]  # so tokenizers from before crops keep their fingerprint and latent caches
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TokenizerConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    # CPU tests: 16x16 -> 4x4x4 latents, a few thousand parameters
    "tiny": TokenizerConfig(image_size=16, block_out_channels=(8, 16, 16), norm_num_groups=4),
    # 64x64 -> 8x8x4 latents; small widths so CPU training takes minutes
    "base": TokenizerConfig(image_size=64, block_out_channels=(16, 32, 64, 64), norm_num_groups=8),
}


def to_float_images(images: torch.Tensor | np.ndarray, size: int, crop=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> float (B, 3, size, size) in [0, 1].

    The one crop (`crop_box` of the optional (top, left, height, width) fractions) and resize
    (antialiased bilinear) used for training, caching and inference, so the tokenizer never sees
    two different downsamplers.
    """
    x = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images  # copy: mmap is read-only
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"images: expected (B, H, W, 3) uint8 or (B, 3, H, W) float, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"uint8 images: expected (B, H, W, 3) RGB, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    elif x.is_floating_point():
        if x.shape[1] != 3:
            raise ValueError(f"float images: expected (B, 3, H, W) in [0, 1], got shape {tuple(x.shape)}")
        x = x.float()
    else:
        raise ValueError(f"images: dtype {x.dtype}, expected uint8 (B,H,W,3) or float (B,3,H,W)")
    if crop is not None:
        y0, y1, x0, x1 = crop_box(x.shape[-2], x.shape[-1], crop)
        x = x[..., y0:y1, x0:x1]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0)


def resize_uint8(images: np.ndarray, size: int, crop=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> uint8 (B, 3, size, size): compact storage of training images."""
    x = to_float_images(torch.from_numpy(np.array(images)), size, crop)  # copy: mmap is read-only
    return (x * 255.0).round().to(torch.uint8)


class Tokenizer(nn.Module):
    """AutoencoderKL over one camera image; latents = posterior mean * config.latent_scale."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        from diffusers import AutoencoderKL  # heavy import: only when a tokenizer is built

        self.config = config
        n = len(config.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
            sample_size=config.image_size, mid_block_add_attention=config.mid_attention,
            scaling_factor=1.0,  # diffusers' own factor is unused; ours is config.latent_scale
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prepare(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return to_float_images(images, self.config.image_size).to(self.device) * 2.0 - 1.0  # (B,3,S,S) in [-1,1]

    def camera_images(self, images: torch.Tensor | np.ndarray, camera: str) -> torch.Tensor:
        """Frames of one camera -> float (B, 3, S, S) in [0, 1], cropped as `config.crops` says."""
        return to_float_images(images, self.config.image_size, self.config.crops.get(camera))

    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> scaled latents (B, C, h, w) float32."""
        post = self.vae.encode(self._prepare(images)).latent_dist
        return post.mean * self.config.latent_scale  # (B, C, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, S, S) float in [0, 1]."""
        x = self.vae.decode(latents.to(self.device, torch.float32) / self.config.latent_scale).sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)  # (B, 3, S, S)

    def reconstruct(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.decode(self.encode(images))

    def loss(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction (L1 or MSE, on [-1, 1] images) + kl_weight * KL (mean per latent element)."""
        x = self._prepare(images)  # (B, 3, S, S)
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample  # (B, 3, S, S)
        if self.config.recon_loss == "l1":
            rec_loss = (rec - x).abs().mean()
        else:
            rec_loss = F.mse_loss(rec, x)
        kl = post.kl().mean() / float(np.prod(self.config.latent_shape))
        loss = rec_loss + self.config.kl_weight * kl
        return loss, {"loss": loss.item(), "recon": rec_loss.item(), "kl": kl.item()}

    # -- identity and persistence ------------------------------------------------------------

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the config and every weight; names the latent cache of this tokenizer."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for key, value in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None,
             data_manifest: str | os.PathLike | None = None) -> Path:
        extra = dict(extra or {}, fingerprint=self.fingerprint())
        return save_checkpoint(path, CHECKPOINT_KIND, {"tokenizer": self}, self.config.to_dict(), extra,
                               data_manifest)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Tokenizer:
        states, meta = load_checkpoint(path, expected_kind=CHECKPOINT_KIND)
        tok = cls(TokenizerConfig.from_dict(meta["config"]))
        load_into(tok, states["tokenizer"], f"tokenizer checkpoint {path}")
        return tok.to(map_location).eval()


def checkpoint_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in a tokenizer checkpoint, or the one inside a policy's (every latent kind
    stores the tokenizer it reads), in eval mode on the CPU. ValueError for a checkpoint without one."""
    states, meta = load_checkpoint(path)
    cfg = meta["config"] if meta["kind"] == "tokenizer" else meta["config"].get("tokenizer")
    if cfg is None or "tokenizer" not in states:
        raise ValueError(f"{path}: a {meta['kind']} checkpoint without a tokenizer")
    tok = Tokenizer(TokenizerConfig.from_dict(cfg))
    load_into(tok, states["tokenizer"], f"{path}: tokenizer")  # names the checkpoint on a mismatch
    return tok.eval()


@torch.no_grad()
def calibrate_latent_scale(tokenizer: Tokenizer, images: Iterable[torch.Tensor]) -> float:
    """Set `tokenizer.config.latent_scale` to 1 / std of unscaled latents over `images` batches.

    Call once after training, before saving the final checkpoint (that stores it).
    """
    was = tokenizer.training
    tokenizer.eval()
    tokenizer.config.latent_scale = 1.0
    total, total_sq, n = 0.0, 0.0, 0
    for batch in images:
        z = tokenizer.encode(batch).double()  # unscaled: latent_scale is 1 here
        total += z.sum().item()
        total_sq += (z * z).sum().item()
        n += z.numel()
    if n == 0:
        raise ValueError("calibrate_latent_scale: no images given")
    var = max(total_sq / n - (total / n) ** 2, 1e-12)
    tokenizer.config.latent_scale = float(1.0 / np.sqrt(var))
    tokenizer.train(was)
    return tokenizer.config.latent_scale
