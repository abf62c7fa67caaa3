"""Does a tokenizer keep the small objects a task is about? (a check, not a test)

Frame-wide PSNR/SSIM hardly weigh a 5 cm target that covers 20 of 4096 pixels: a tokenizer can
score 28 dB while turning the green target into table. This reconstructs frames of a few episodes
with each given tokenizer (or policy checkpoint: its tokenizer) and reports per camera the PSNR
and `object_l1`, the L1 error on pixels far from their image's median colour (the objects), and
writes a PNG: per camera, the real frames (again where a tokenizer crops differently), each
followed by its tokenizers' reconstructions.

    python bench/tokenizer_objects.py --tokenizer runs/v2/tokenizer/latest models/avdp_default \
        --data runs/default/data_push/dataset --out docs/images/tokenizer_objects.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.model.tokenizer import Tokenizer, checkpoint_tokenizer
from avdp_ros.train.metrics import object_l1, psnr


def load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer checkpoint, or the tokenizer inside a policy checkpoint."""
    return checkpoint_tokenizer(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", nargs="+", required=True, help="tokenizer or policy checkpoint directories")
    ap.add_argument("--data", required=True, help="a converted dataset")
    ap.add_argument("--episodes", type=int, default=6, help="last N episodes of the dataset")
    ap.add_argument("--stride", type=int, default=6, help="every N-th frame")
    ap.add_argument("--show", type=int, default=8, help="frames per row in the PNG")
    ap.add_argument("--out", type=Path, default=None, help="PNG path")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = EpisodeDataset(a.data, validate=False)
    eps = [ds[i] for i in range(max(len(ds) - a.episodes, 0), len(ds))]
    toks = [load_tokenizer(p) for p in a.tokenizer]
    rows = []
    print("| tokenizer | camera | PSNR (dB) | object_l1 |\n| --- | --- | --- | --- |")
    for cam in ds.cameras:
        frames = np.concatenate([np.asarray(ep[cam][::a.stride]) for ep in eps])  # (N, H, W, 3)
        for k, (path, tok) in enumerate(zip(a.tokenizer, toks)):
            x = tok.camera_images(frames, cam)  # (N, 3, S, S): each tokenizer's own crop
            with torch.no_grad():
                rec = torch.cat([tok.reconstruct(x[i:i + 64]) for i in range(0, len(x), 64)])
            print(f"| {path} | {cam} | {psnr(rec, x).mean():.1f} | {object_l1(rec, x).nanmean():.3f} |")
            show = torch.linspace(0, len(x) - 1, a.show).long()
            if k == 0 or tok.config.crops.get(cam) != toks[k - 1].config.crops.get(cam):
                rows.append(torch.cat(list(x[show]), 2))  # the real frames, as this tokenizer crops them
            rows.append(torch.cat(list(rec[show]), 2))
    if a.out:
        import imageio.v3 as iio

        a.out.parent.mkdir(parents=True, exist_ok=True)
        width = max(r.shape[-1] for r in rows)
        rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
        img = (torch.cat(rows, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        iio.imwrite(a.out, np.kron(img, np.ones((2, 2, 1), np.uint8)))  # 2x: small objects stay visible
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
