"""Which part of a table's look moves an encoder's latents? (a check, not a test)

For the first frame of each seed of an appearance suite, the wrist (or scene) camera's latent MSE
against the REFERENCE's latents of the nominal view of the same state (as bench/invariance.py),
with the drawn look and with one table parameter swapped at a time: the surface for a training one
(`flat`, `checker`, `planks`), the hue moved into a training family (30 or 210 degrees, saturation
and value kept), the value scaled by 0.8. Grouped by the drawn surface. Where a swap brings the
error down to the training looks' level, that parameter is what the encoder has not learnt.

    python bench/table_factors.py --reference models/avdp_default \
        --tokenizer models/avdp_default runs/inv8/tokenizer/latest --suite heldout_table --seeds 40

`--hard-seeds N` prints instead the first N seeds from --first-seed whose look is a light
`gradient` table (HSV value at least the nominal table's): where push loses most, picked by the
drawn look alone. The ninth session's hard validation set is `--hard-seeds 100 --first-seed 13100`:

    avdp-eval --policy P --task push --appearance heldout_table --threads 1 --out OUT \
        --seeds $(python bench/table_factors.py --hard-seeds 100 --first-seed 13100)
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import os
from collections import defaultdict

import numpy as np
import torch

from avdp_ros.sim import appearance as ap

try:  # run as `python bench/table_factors.py`
    from failures_by_look import NOMINAL_VALUE
    from tokenizer_objects import load_tokenizer
except ImportError:  # imported as bench.table_factors
    from bench.failures_by_look import NOMINAL_VALUE
    from bench.tokenizer_objects import load_tokenizer


def _hsv(a: ap.Appearance, hue: float | None = None, value: float = 1.0) -> ap.Appearance:
    h, s, v = colorsys.rgb_to_hsv(*a.table_rgb)
    return dataclasses.replace(a, table_rgb=colorsys.hsv_to_rgb(h if hue is None else hue / 360.0, s, v * value))


VARIANTS = {
    "as drawn": lambda a: a,
    "surface flat": lambda a: dataclasses.replace(a, table_texture="flat"),
    "surface checker": lambda a: dataclasses.replace(a, table_texture="checker"),
    "surface planks": lambda a: dataclasses.replace(a, table_texture="planks"),
    "hue 30": lambda a: _hsv(a, hue=30.0),
    "hue 210": lambda a: _hsv(a, hue=210.0),
    "value x0.8": lambda a: _hsv(a, value=0.8),
}


def hard_seeds(count: int, first: int, suite: str = "heldout_table") -> list[int]:
    """The first `count` seeds from `first` whose `suite` look is a light `gradient` table (light as
    bench/failures_by_look.py counts it)."""
    seeds, seed = [], first
    while len(seeds) < count:
        a = ap.draw(suite, seed)
        if a.table_texture == "gradient" and colorsys.rgb_to_hsv(*a.table_rgb)[2] >= NOMINAL_VALUE:
            seeds.append(seed)
        seed += 1
        if seed - first > 100 * count + 1000:
            raise SystemExit(f"{suite} draws (almost) no light gradient tables")
    return seeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", help="the tokenizer (or policy) whose nominal latents are the target")
    p.add_argument("--tokenizer", nargs="+", help="tokenizers or policy checkpoints to measure")
    p.add_argument("--hard-seeds", type=int, metavar="N", help="print N light-gradient seeds and exit")
    p.add_argument("--suite", default="heldout_table", help="appearance distribution drawn (default %(default)s)")
    p.add_argument("--task", default="push", choices=("push", "pick_place"))
    p.add_argument("--camera", default="wrist", choices=("wrist", "camera"))
    p.add_argument("--seeds", type=int, default=40, help="how many seeds (default %(default)s)")
    p.add_argument("--first-seed", type=int, default=13000, help="default %(default)s (validation seeds)")
    a = p.parse_args()
    if a.hard_seeds:
        print(" ".join(map(str, hard_seeds(a.hard_seeds, a.first_seed, a.suite))))
        return
    if not (a.reference and a.tokenizer):
        p.error("--reference and --tokenizer are required (unless --hard-seeds)")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from avdp_ros.sim.env import PandaSim, SimConfig

    torch.set_grad_enabled(False)
    ref = load_tokenizer(a.reference)
    toks = {t: load_tokenizer(t) for t in a.tokenizer}
    sim = PandaSim(SimConfig(appearance=a.suite, task=a.task, cameras=(a.camera,)))
    err: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    surfaces = []
    try:
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            drawn = ap.draw(a.suite, seed)
            surfaces.append(drawn.table_texture)
            for name, swap in VARIANTS.items():
                sim.reset(seed, look=swap(drawn))
                image, nominal = sim.render(a.camera)[None], sim.render_nominal(a.camera)[None]
                target = ref.encode(ref.camera_images(nominal, a.camera))
                for t, tok in toks.items():
                    z = tok.encode(tok.camera_images(image, a.camera))
                    err[(name, t, drawn.table_texture)].append(((z - target) ** 2).mean().item())
    finally:
        sim.close()
    kinds = sorted(set(surfaces))
    print(f"{a.suite}, {a.task}, {a.camera} camera, first frames of seeds {a.first_seed}+ "
          f"({', '.join(f'{surfaces.count(k)} {k}' for k in kinds)}): latent MSE against the nominal view's")
    print("| table | " + " | ".join(f"{t}: {k}" for t in toks for k in kinds) + " |")
    print("| --- | " + " | ".join("---" for _ in toks for _ in kinds) + " |")
    for name in VARIANTS:
        print(f"| {name} | " + " | ".join(f"{np.mean(err[(name, t, k)]):.3f}" for t in toks for k in kinds) + " |")


if __name__ == "__main__":
    main()
