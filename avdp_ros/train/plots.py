"""Training artefacts a person looks at: loss curves and predicted-vs-real frame GIFs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

NOT_PLOTTED = ("step", "lr", "samples_per_s", "grad_norm")


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss curves: every numeric train key (loss, components) and every val/ metric, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for h in history for k, v in h.items()
                   if k not in NOT_PLOTTED and isinstance(v, (int, float))})
    train_keys = [k for k in keys if not k.startswith("val/")]
    val_keys = [k for k in keys if k.startswith("val/")]
    panels = [("train", train_keys), ("validation", val_keys)]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4), squeeze=False)
    for ax, (name, ks) in zip(axes[0], panels):
        for k in ks:
            pts = [(h["step"], h[k]) for h in history if k in h]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, marker="." if len(pts) < 30 else None)
        if name == "train" and all(h.get(k, 1.0) > 0 for h in history for k in ks if k in h):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{title} {name}".strip())
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_comparison_gif(real: torch.Tensor, pred: torch.Tensor, path: Path, fps: float = 4.0,
                        scale: int = 2) -> None:
    """GIF of real (top row) vs predicted (bottom row) frames.

    Args:
        real, pred: (T, N, 3, S, S) float in [0, 1]: T time steps, N images side by side (cameras).
    """
    import imageio.v2 as imageio

    frames = []
    for t in range(real.shape[0]):
        rows = [torch.cat(list(x[t]), dim=-1) for x in (real, pred)]  # each (3, S, N*S)
        img = torch.cat(rows, dim=-2)  # (3, 2S, N*S)
        if scale > 1:
            img = img.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        frames.append((img.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy())
    imageio.mimsave(path, frames, duration=1.0 / fps, loop=0)
