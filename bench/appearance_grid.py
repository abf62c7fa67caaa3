"""PNG grid of example scenes: one row per appearance distribution, one column per seed (scene
camera, the push task's layout of that seed). Writes docs/images/appearances.png by default.

    python bench/appearance_grid.py [--seeds 6] [--size 192] [--out docs/images/appearances.png]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from avdp_ros.sim.appearance import DISTRIBUTIONS  # noqa: E402
from avdp_ros.sim.env import PandaSim, SimConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=192, help="image side in pixels")
    ap.add_argument("--out", type=Path, default=Path("docs/images/appearances.png"))
    a = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(DISTRIBUTIONS)
    fig, axes = plt.subplots(len(names), a.seeds, figsize=(1.6 * a.seeds, 1.75 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        sim = PandaSim(SimConfig(image_width=a.size, image_height=a.size, appearance=name))
        try:
            for c in range(a.seeds):
                sim.reset(a.first_seed + c)
                ax = axes[r, c]
                ax.imshow(np.asarray(sim.render("camera")))
                ax.set_xticks([]), ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(name, fontsize=9)
                if r == 0:
                    ax.set_title(f"seed {a.first_seed + c}", fontsize=8)
        finally:
            sim.close()
    fig.suptitle("Scene camera per appearance distribution (sim/appearance.py)", fontsize=10)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
