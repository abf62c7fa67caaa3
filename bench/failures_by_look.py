"""Which scene looks does a policy fail in? (a check, not a test)

Reads the `summary.json` of `avdp-eval` runs (each names its appearance distribution and the seed
of every episode), draws each episode's appearance again from its seed (`sim.appearance.draw`
is deterministic), and prints success grouped by the look's attributes: table surface, table hue
band, table brightness, number of distractors, backdrop, fill and spot light, and surface x brightness.
Where a held-out suite loses episodes this says which part of it does.

    python bench/failures_by_look.py runs/eval/heldout_table_push runs/eval/train_push
"""

from __future__ import annotations

import argparse
import colorsys
import json
from collections import defaultdict
from pathlib import Path

from avdp_ros.sim.appearance import Appearance, draw

NOMINAL_VALUE = colorsys.rgb_to_hsv(*Appearance().table_rgb)[2]  # brighter than the nominal table: "light"


def attributes(a: Appearance) -> list[str]:
    """The groups one episode's look falls in."""
    hue, _, value = colorsys.rgb_to_hsv(*a.table_rgb)
    bright = "light" if value >= NOMINAL_VALUE else "dark"
    return [f"surface {a.table_texture}", f"table hue {round(hue * 360 / 30) * 30 % 360:03d} deg (+-15)",
            f"table {bright}", f"surface {a.table_texture}, table {bright}",
            f"{len(a.distractors)} distractors", f"backdrop {'wall' if any(a.backdrop_rgb) else 'none'}",
            f"fill light {'on' if any(a.fill_rgb) else 'off'}", f"spot light {'on' if any(a.spot_rgb) else 'off'}"]


def by_look(summary: dict) -> dict[str, list[int]]:
    """attribute -> [successes, episodes]."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ep in summary["per_episode"]:
        for key in attributes(draw(summary["appearance"], int(ep["seed"]))):
            groups[key][0] += bool(ep["success"])
            groups[key][1] += 1
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+", type=Path, help="avdp-eval output folders (with summary.json)")
    a = ap.parse_args()
    for folder in a.evals:
        summary = json.loads((folder / "summary.json").read_text())
        if "appearance" not in summary or "per_episode" not in summary:
            raise SystemExit(f"{folder}/summary.json: expected 'appearance' and 'per_episode' (an avdp-eval run)")
        ok, n = sum(bool(e["success"]) for e in summary["per_episode"]), len(summary["per_episode"])
        print(f"\n{folder}: {summary['task']} in {summary['appearance']} scenes, {ok} of {n}")
        for key, (k, m) in sorted(by_look(summary).items()):
            print(f"  {key:36s} {k:4d} of {m:4d}  {100 * k / m:5.1f}%")


if __name__ == "__main__":
    main()
