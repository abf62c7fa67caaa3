"""Validation metrics: image quality of reconstructions / predictions and errors of action chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, 3, H, W) images in [0, 1] -> (B,)."""
    mse = ((pred - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def object_mask(images: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, H, W) bool: the coloured pixels far from their image's
    median colour (summed |RGB - median| > threshold and chroma max(RGB) - min(RGB) > threshold),
    the small coloured objects a task is about (cube, target) on a table that fills most of the view."""
    median = images.flatten(2).median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1)
    chroma = images.max(1).values - images.min(1).values  # (B, H, W)
    return ((images - median).abs().sum(1) > threshold) & (chroma > threshold)


def object_latents(images: torch.Tensor, latent_hw: tuple[int, int], batch: int = 256) -> torch.Tensor:
    """(N, 3, H, W) images, uint8 or float in [0, 1] -> (N, 1, h, w) float: 1 at the latent
    positions whose image patch holds an `object_mask` pixel, else 0."""
    out = torch.zeros(len(images), 1, *latent_hw)
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float()
        mask = object_mask(x / 255.0 if images.dtype == torch.uint8 else x)[:, None].float()
        out[i:i + batch] = F.adaptive_max_pool2d(mask, latent_hw).cpu()
    return out


def object_l1(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Mean L1 error (B,) over the `object_mask` pixels of the target: the small coloured objects a
    task is about (cube, target), not the arm, walls or shadows, and what frame-wide
    PSNR/SSIM hardly weigh. A small autoencoder loses them first: one that turned the green target
    into table scored 28 dB. NaN for an image without such pixels."""
    mask = object_mask(target, threshold)
    err = (pred - target).abs().mean(1)  # (B, H, W)
    n = mask.flatten(1).sum(1)
    return torch.where(n > 0, (err * mask).flatten(1).sum(1) / n.clamp_min(1), torch.full_like(n, float("nan"),
                                                                                            dtype=err.dtype))


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Gaussian window, luminance over RGB channels averaged) -> (B,)."""
    c1, c2 = 0.01**2, 0.03**2
    window = min(window, pred.shape[-1], pred.shape[-2])
    coords = torch.arange(window, dtype=pred.dtype, device=pred.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(pred.shape[1], 1, window, window)  # (3, 1, w, w)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=x.shape[1])

    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def action_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean errors of (..., 10) actions (x y z rot6d width, metres): position mm, rotation deg, gripper mm."""
    from avdp_ros.model.rotation import rot6d_to_matrix

    pos_mm = (pred[..., :3] - target[..., :3]).norm(dim=-1).mean() * 1000.0
    r_pred, r_true = rot6d_to_matrix(pred[..., 3:9]), rot6d_to_matrix(target[..., 3:9])
    rel = r_pred.transpose(-1, -2) @ r_true  # (..., 3, 3)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    rot_deg = torch.rad2deg(torch.acos(cos)).mean()
    grip_mm = (pred[..., 9] - target[..., 9]).abs().mean() * 1000.0
    return {"pos_mm": pos_mm.item(), "rot_deg": rot_deg.item(), "gripper_mm": grip_mm.item()}
