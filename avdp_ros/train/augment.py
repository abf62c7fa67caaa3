"""Image augmentation for training: colour jitter and a random shift, seeded, off at inference.

Colour jitter (brightness, contrast, saturation, hue, white balance) stands in for lights and
surfaces the training scenes did not show; the shift (DrQ-style: pad by edge replication, crop
back at a random offset), a small rotation and zoom, for a camera that moved a little. Only
training code calls `augment`; the tokenizer, the policy and the exported graphs never do, so
inference sees the images as they are.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane, saturation its scale
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random image changes; all 0 = off. Stored in the checkpoint of a run that uses it."""

    brightness: float = 0.0  # image x U(1 - b, 1 + b)
    contrast: float = 0.0    # (image - mean) x U(1 - c, 1 + c) + mean
    saturation: float = 0.0  # chroma x U(1 - s, 1 + s)
    hue: float = 0.0         # hue rotation up to +-hue of the colour wheel (0.5 = half a turn)
    shift: int = 0           # translation up to +-shift pixels in x and y
    white_balance: float = 0.0  # red x (1 + w u), blue x (1 - w u), u ~ U(-1, 1): a warmer or cooler light
    rotate: float = 0.0      # rotation about the image centre up to +-rotate degrees
    scale: float = 0.0       # zoom x U(1 - s, 1 + s) about the image centre
    ramp: float = 0.0        # brightness x (1 + r u d), d in [-1, 1] along a random direction, u ~ U(-1, 1):
                             # a light from one side, uneven over the table

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v < 1.0):
                raise ValueError(f"AugmentConfig.{name} = {v!r}: expected in [0, 1)")
        if not (isinstance(self.hue, (int, float)) and math.isfinite(self.hue) and 0.0 <= self.hue <= 0.5):
            raise ValueError(f"AugmentConfig.hue = {self.hue!r}: expected in [0, 0.5] (a fraction of the wheel)")
        for name, high in (("white_balance", 1.0), ("scale", 0.5), ("ramp", 1.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v < high):
                raise ValueError(f"AugmentConfig.{name} = {v!r}: expected in [0, {high:g})")
        if not (isinstance(self.rotate, (int, float)) and math.isfinite(self.rotate) and 0.0 <= self.rotate <= 45.0):
            raise ValueError(f"AugmentConfig.rotate = {self.rotate!r}: expected in [0, 45] (degrees)")
        if not (isinstance(self.shift, int) and 0 <= self.shift <= 32):
            raise ValueError(f"AugmentConfig.shift = {self.shift!r}: expected an integer 0..32 (pixels)")

    @property
    def enabled(self) -> bool:
        return any(dataclasses.astuple(self))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    # lights and tables a lab may have that the sim scenes lack; a 4-pixel shift at 64x64 is ~2 cm
    "default": AugmentConfig(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, shift=4),
    # for an appearance-invariant encoder (avdp-train-tokenizer --target-look), where only the input is
    # changed and the target stays the nominal view: wider lights (x 0.55-1.45 in image space, warm and
    # cool casts) and a camera bumped by a few degrees (docs/appearance.md says what this covers)
    "invariant": AugmentConfig(brightness=0.45, contrast=0.3, saturation=0.4, hue=0.05, shift=6,
                               white_balance=0.3, rotate=4.0, scale=0.06),
    # `invariant` and light that falls off across the image (x 0.6-1.4 from one edge to the other at
    # most): added after validation showed the encoder's largest error on tables lit unevenly
    "invariant_ramp": AugmentConfig(brightness=0.45, contrast=0.3, saturation=0.4, hue=0.05, shift=6,
                                    white_balance=0.3, rotate=4.0, scale=0.06, ramp=0.4),
}


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, shared: bool = False) -> torch.Tensor:
    """(B, 3, H, W) float images in [0, 1] -> the same shape, each image changed independently, or
    with `shared` all by the same draw (the frames of one episode: one light, one bumped tripod).

    The draws come from `generator` (on the CPU), so a run seeded the same way augments the same.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"augment: expected (B, 3, H, W) images, got {tuple(images.shape)}")
    if not cfg.enabled:
        return images
    B, dev = images.shape[0], images.device
    n = 1 if shared else B  # draws

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=generator).expand(B, *shape)

    def u(r: float) -> torch.Tensor:  # (B, 1, 1, 1) factors in [1 - r, 1 + r]
        return (1.0 + r * (2.0 * rand() - 1.0)).view(B, 1, 1, 1).to(dev)

    x = images * u(cfg.brightness)
    if cfg.white_balance:  # drawn only when on: the other presets' draws stay as they were
        w = cfg.white_balance * (2.0 * rand() - 1.0).view(B, 1, 1).to(dev)
        x = torch.stack([x[:, 0] * (1.0 + w), x[:, 1], x[:, 2] * (1.0 - w)], dim=1)
    if cfg.ramp:  # drawn only when on, like white balance
        H, W = x.shape[-2:]
        theta = (2.0 * math.pi * rand()).view(B, 1, 1).to(dev)
        gain = (cfg.ramp * (2.0 * rand() - 1.0)).view(B, 1, 1).to(dev)
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, H, device=dev), torch.linspace(-1.0, 1.0, W, device=dev),
                                indexing="ij")
        along = (torch.cos(theta) * xs + torch.sin(theta) * ys) / math.sqrt(2.0)  # in [-1, 1] over the image
        x = x * (1.0 + gain * along)[:, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(cfg.contrast) + mean
    if cfg.saturation or cfg.hue:
        yiq = torch.einsum("ij,bjhw->bihw", _RGB2YIQ.to(dev), x)  # (B, 3, H, W)
        angle = (cfg.hue * 2.0 * math.pi * (2.0 * rand() - 1.0)).to(dev)
        scale = u(cfg.saturation).view(B)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos[:, None, None] * i - sin[:, None, None] * q,
                           sin[:, None, None] * i + cos[:, None, None] * q], dim=1)
        x = torch.einsum("ij,bjhw->bihw", _YIQ2RGB.to(dev), yiq)
    x = x.clamp(0.0, 1.0)
    if cfg.rotate or cfg.scale:
        angle = torch.deg2rad(cfg.rotate * (2.0 * rand() - 1.0)).to(dev)  # (B,)
        zoom = 1.0 / u(cfg.scale).view(B)  # sampling grid scale: < 1 zooms in
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.shift:
        s = cfg.shift
        H, W = x.shape[-2:]
        padded = F.pad(x, (s, s, s, s), mode="replicate")  # (B, 3, H + 2s, W + 2s)
        dy, dx = (torch.randint(0, 2 * s + 1, (n,), generator=generator).expand(B) for _ in range(2))
        x = torch.stack([padded[b, :, dy[b]:dy[b] + H, dx[b]:dx[b] + W] for b in range(B)])
    return x
