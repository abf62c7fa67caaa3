"""Training throughput with image augmentation against without (not a test).

1. One tokenizer training step (base preset, the images it trains on) with and without
   `train/augment.py`'s default preset, interleaved in the same run, plus the augmentation alone.
2. One action-only policy training step (the shipped default's model, batch `--policy-batch`)
   on cached latents, as with augmented views cached per frame (`data/latents.cache_views`: a
   view is an index, so the step is the plain one), against the same step encoding its window's
   augmented frames on the fly (augment + tokenizer encode of both cameras); and what caching V
   views costs once per frame.

    python bench/augment_throughput.py [--steps 30] [--batch-size 32] [--threads 1] [--policy models/avdp_default]
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
    ap.add_argument("--policy", default="models/avdp_default", help="action-only checkpoint for part 2 ('' = skip)")
    ap.add_argument("--policy-batch", type=int, default=64)
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
    if a.policy:
        policy_steps(a)
    return 0


def policy_steps(a: argparse.Namespace) -> None:
    from avdp_ros.model.checkpoint import load_checkpoint, load_into
    from avdp_ros.model.config import ACTION_DIM, PolicyConfig
    from avdp_ros.model.idm import ActionBatch, ActionOnlyPolicy
    from avdp_ros.train.sources import frozen_tokenizer

    states, meta = load_checkpoint(a.policy, expected_kind="baseline")
    cfg = PolicyConfig.from_dict(meta["config"])
    policy = ActionOnlyPolicy(cfg)
    load_into(policy, states["baseline"], a.policy)
    tok = frozen_tokenizer(cfg.tokenizer, states["tokenizer"], torch.device("cpu"), a.policy)
    opt = make_optimizer(policy, TrainConfig(lr=1e-4))
    # the frames the head reads (idm.past_frames): all an on-the-fly encoder would have to encode
    B, Fc, cams = a.policy_batch, cfg.idm.past_frames, list(cfg.cameras)
    rng = np.random.default_rng(0)
    frames = {c: rng.integers(0, 256, (B * Fc, 128, 128, 3), dtype=np.uint8) for c in cams}  # dataset frames
    with torch.no_grad():
        cached = torch.stack([tok.encode(tok.camera_images(frames[c], c)) for c in cams], 1)  # (B*Fc, cams, C,h,w)
    cached = cached.view(B, Fc, len(cams), *cached.shape[2:])
    state, instr = torch.zeros(B, 10), torch.zeros(B, dtype=torch.long)
    actions = torch.randn(B, cfg.horizon, ACTION_DIM)
    gen, aug = torch.Generator().manual_seed(0), AUGMENT_PRESETS["default"]

    def step(context: torch.Tensor) -> None:
        loss, _ = policy.loss(ActionBatch(context=context, state=state, instr=instr, future=None, actions=actions))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def on_the_fly() -> torch.Tensor:
        with torch.no_grad():
            lat = [tok.encode(augment(tok.camera_images(frames[c], c), aug, gen)) for c in cams]
        return torch.stack(lat, 1).view_as(cached)

    times: dict[str, list[float]] = {"cached latents (plain, or augmented views)": [],
                                     "augmented and encoded on the fly": [], "caching one view (per frame)": []}
    for k in range(a.steps + 2):
        t0 = time.perf_counter()
        step(cached)
        t1 = time.perf_counter()
        step(on_the_fly())
        t2 = time.perf_counter()
        with torch.no_grad():
            for c in cams:
                tok.encode(augment(tok.camera_images(frames[c], c), aug, gen, shared=True))
        t3 = time.perf_counter()
        if k >= 2:
            times["cached latents (plain, or augmented views)"].append(t1 - t0)
            times["augmented and encoded on the fly"].append(t2 - t1)
            times["caching one view (per frame)"].append((t3 - t2) / (B * Fc))
    base = np.median(times["cached latents (plain, or augmented views)"])
    print(f"\n| action-only policy training, batch {B}, {len(cams)} cameras x {Fc} frame(s), {a.threads} thread(s) "
          "| median ms | windows/s | vs cached |")
    print("| --- | --- | --- | --- |")
    for name, t in list(times.items())[:2]:
        med = np.median(t)
        print(f"| {name} | {med * 1e3:.1f} | {B / med:.0f} | {med / base:.2f}x time |")
    per_frame = np.median(times["caching one view (per frame)"])
    print(f"\ncaching one augmented view: {per_frame * 1e3:.2f} ms per frame (both cameras); "
          f"a 100k-frame dataset at 3 extra views: {3 * 1e5 * per_frame / 60:.0f} min once")


if __name__ == "__main__":
    raise SystemExit(main())
