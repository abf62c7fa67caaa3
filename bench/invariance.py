"""How far does a scene's look move a tokenizer's latents from the nominal scene's? (a check, not a test)

On episodes recorded with `avdp-dagger --nominal-pairs` (every frame also as the nominal scene
shows the same state), per dataset and camera: the MSE between each tokenizer's latents of the
frames and the REFERENCE's latents of their nominal views, in REFERENCE's scaled units (the latents
have unit variance, so 1.0 is as far as an unrelated frame); that MSE over the latents of the
task's objects only (where the nominal view shows the cube or the target:
train/metrics.object_latents); and the object L1 of the decoded latents against the nominal views.
A policy trained on REFERENCE's latents of nominal scenes sees exactly what it was trained on where
the MSE is 0. `--nominal` feeds the nominal views themselves instead: the drift of a trained-on
encoder on the look the policy was trained on. `--png` draws, per dataset, a frame of each
camera, what each tokenizer's latents of it decode to (REFERENCE's decoder), and the nominal view.

    python bench/invariance.py --reference models/avdp_default \
        --tokenizer models/avdp_default runs/inv/tokenizer/latest --data runs/inv/val_*/dataset \
        --png docs/images/invariant_encoder.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.model.tokenizer import Tokenizer
from avdp_ros.train.metrics import object_l1, object_latents

try:  # run as `python bench/invariance.py`
    from tokenizer_objects import load_tokenizer
except ImportError:  # imported as bench.invariance
    from bench.tokenizer_objects import load_tokenizer


@torch.no_grad()
def encode(tok: Tokenizer, frames: np.ndarray, camera: str) -> torch.Tensor:
    x = tok.camera_images(frames, camera)
    return torch.cat([tok.encode(x[i:i + 128]) for i in range(0, len(x), 128)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="the tokenizer (or policy) whose nominal latents are the target")
    ap.add_argument("--tokenizer", nargs="+", required=True, help="tokenizers or policy checkpoints to measure")
    ap.add_argument("--data", nargs="+", required=True, help="datasets recorded with avdp-dagger --nominal-pairs")
    ap.add_argument("--episodes", type=int, default=10, help="episodes per dataset (default %(default)s)")
    ap.add_argument("--stride", type=int, default=2, help="every N-th frame (default %(default)s)")
    ap.add_argument("--png", type=Path, help="write the example grid here")
    ap.add_argument("--nominal", action="store_true",
                    help="feed the nominal views themselves: how far each tokenizer drifted on the look the policy "
                         "was trained on (0 for REFERENCE)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    ref = load_tokenizer(a.reference)
    toks = {p: load_tokenizer(p) for p in a.tokenizer}
    rows = []  # per dataset and camera: input, each tokenizer's decoding, the nominal view
    print("| data | camera | " + " | ".join(f"{p}: latent MSE, on objects, object L1" for p in toks) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in toks) + " |")
    for root in a.data:
        ds = EpisodeDataset(root, validate=False)
        for cam in ds.cameras:
            frames, nominal = [], []
            for i in range(min(a.episodes, len(ds))):
                folder = ds.episode_dir(i)
                if not (folder / f"{cam}_nominal.npy").exists():
                    raise SystemExit(f"{folder}: no {cam}_nominal.npy; record with avdp-dagger --nominal-pairs")
                nominal.append(np.load(folder / f"{cam}_nominal.npy")[::a.stride])
                if not a.nominal:  # with --nominal the nominal views are the input too
                    frames.append(np.asarray(ds[i][cam][::a.stride]))
            nominal = np.concatenate(nominal)
            frames = nominal if a.nominal else np.concatenate(frames)
            target = encode(ref, nominal, cam)
            y = ref.camera_images(nominal, cam)
            objects = object_latents(y, tuple(target.shape[-2:])).expand_as(target)
            cells = []
            k = len(frames) // 2  # an example frame: mid-episode, objects in view
            row = [ref.camera_images(frames[k:k + 1], cam)[0]]
            for tok in toks.values():
                z = encode(tok, frames, cam)
                rec = torch.cat([ref.decode(z[i:i + 128]) for i in range(0, len(z), 128)])
                err = (z - target) ** 2
                on_objects = (err * objects).sum().item() / max(objects.sum().item(), 1.0)
                d = 4 if a.nominal else 3  # drift on the nominal look is a few thousandths
                cells.append(f"{err.mean().item():.{d}f}, {on_objects:.{d}f}, {object_l1(rec, y).nanmean().item():.3f}")
                row.append(rec[k])
            rows.append(torch.cat([*row, y[k]], dim=2))  # (3, S, S * (tokenizers + 2))
            print(f"| {Path(root).parent.name} | {cam} | " + " | ".join(cells) + " |")
    if a.png:
        import imageio.v2 as imageio

        grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        a.png.parent.mkdir(parents=True, exist_ok=True)
        imageio.imwrite(a.png, grid)
        print(f"wrote {a.png}: per row a frame, then {', '.join(toks)} decoded, then the nominal view")


if __name__ == "__main__":
    main()
