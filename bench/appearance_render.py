"""Render rate with appearance randomisation against the nominal scene (not a test).

Both scenes are rendered in the same run, interleaved episode by episode (this machine is shared
and noisy: a ratio measured in one run is what counts). Each episode resets to a new seed (a new
appearance for the randomised distributions) and renders both cameras `--frames` times.

    python bench/appearance_render.py --episodes 20 --frames 30 [--size 128x128]
    python bench/appearance_render.py --extras --episodes 40 --frames 20   # what each extra costs

`--extras`: one sim, and per seed the `train` look (`--look`: another) rendered in full, without
its backdrop, without its distractors, without either and without its spot light, interleaved with
the nominal look (the same renderer and context for all, so only the scene content differs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from avdp_ros.sim.appearance import DISTRIBUTIONS, Appearance, draw  # noqa: E402
from avdp_ros.sim.env import PandaSim, SimConfig  # noqa: E402


def render_rate(sim: PandaSim, frames: int) -> float:
    """Frames per second rendering both cameras `frames` times."""
    t0 = time.perf_counter()
    for _ in range(frames):
        sim.render("camera")
        sim.render("wrist")
    return 2 * frames / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--frames", type=int, default=30, help="renders of both cameras per episode")
    ap.add_argument("--size", default="128x128", help="WIDTHxHEIGHT")
    ap.add_argument("--appearances", nargs="+", default=list(DISTRIBUTIONS))
    ap.add_argument("--extras", action="store_true", help="the cost of the backdrop, distractors, spot light")
    ap.add_argument("--look", default="train", help="--extras: the distribution drawn (train_spot for the spot light, "
                    "train_surfaces / train_clouds for procedural surfaces)")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    if a.extras:
        return extras(a, w, h)
    sims = {name: PandaSim(SimConfig(image_width=w, image_height=h, appearance=name)) for name in a.appearances}
    rates: dict[str, list[float]] = {name: [] for name in sims}
    try:
        for sim in sims.values():
            sim.render("camera"), sim.render("wrist")  # renderers created outside the timing
        for ep in range(a.episodes):
            for name, sim in sims.items():
                sim.reset(100_000 + ep)
                rates[name].append(render_rate(sim, a.frames))
    finally:
        for sim in sims.values():
            sim.close()
    base = np.median(rates["nominal"]) if "nominal" in rates else None
    print(f"| appearance | frames/s ({w}x{h}, both cameras), median over {a.episodes} episodes | vs nominal |")
    print("| --- | --- | --- |")
    for name, r in rates.items():
        ratio = f"{np.median(r) / base:.2f}" if base else "-"
        print(f"| {name} | {np.median(r):.0f} | {ratio} |")
    return 0


def extras(a: argparse.Namespace, w: int, h: int) -> int:
    variants = {
        "nominal": lambda x: Appearance(),
        "full look": lambda x: x,
        "without backdrop": lambda x: dataclasses.replace(x, backdrop_rgb=(0.0, 0.0, 0.0)),
        "without distractors": lambda x: dataclasses.replace(x, distractors=()),
        "without either": lambda x: dataclasses.replace(x, backdrop_rgb=(0.0, 0.0, 0.0), distractors=()),
        "without spot light": lambda x: dataclasses.replace(x, spot_rgb=(0.0, 0.0, 0.0)),
    }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    sim = PandaSim(SimConfig(image_width=w, image_height=h))
    try:
        sim.render("camera"), sim.render("wrist")
        for ep in range(a.episodes):
            look = draw(a.look, ep)
            for name, f in variants.items():
                sim.reset(ep, look=f(look))
                rates[name].append(render_rate(sim, a.frames))
    finally:
        sim.close()
    base = np.median(rates["nominal"])
    print(f"| {a.look} seeds 0-{a.episodes - 1} | frames/s ({w}x{h}, both cameras) | vs nominal |")
    print("| --- | --- | --- |")
    for name, r in rates.items():
        print(f"| {name} | {np.median(r):.0f} | {np.median(r) / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
