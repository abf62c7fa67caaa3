"""Training throughput with image augmentation against without (not a test).

One tokenizer training step (base preset, the images it trains on) with and without
`train/augment.py`'s default preset, interleaved in the same run, plus the augmentation alone.
The latent jobs (video, IDM, baseline) train on cached latents and do not augment yet.

    python bench/augment_throughput.py [--steps 30] [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from avdp_ros.model.tokenizer import TOKENIZER_PRESETS, Tokenizer
from avdp_ros.train.augment import AUGMENT_PRESETS, augment
from avdp_ros.train.engine import TrainConfig, make_optimizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = Tokenizer(TOKENIZER_PRESETS["base"])
    opt = make_optimizer(tok, TrainConfig(lr=1e-4))
    S = tok.config.image_size
    images = torch.rand(a.batch_size, 3, S, S)
    gen, cfg = torch.Generator().manual_seed(0), AUGMENT_PRESETS["default"]
    times: dict[str, list[float]] = {"plain step": [], "augmented step": [], "augmentation alone": []}
    for step in range(a.steps + 2):
        for name in ("plain step", "augmented step"):
            t0 = time.perf_counter()
            x = augment(images, cfg, gen) if name == "augmented step" else images
            loss, _ = tok.loss(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step >= 2:  # the first steps warm up the allocator
                times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        augment(images, cfg, gen)
        if step >= 2:
            times["augmentation alone"].append(time.perf_counter() - t0)
    base = np.median(times["plain step"])
    print(f"| tokenizer training, batch {a.batch_size} of {S}x{S}, {a.threads} thread(s) | median ms | "
          "samples/s | vs plain |")
    print("| --- | --- | --- | --- |")
    for name, t in times.items():
        med = np.median(t)
        print(f"| {name} | {med * 1e3:.1f} | {a.batch_size / med:.0f} | {med / base:.2f}x time |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
