"""Success against the number of action-free episodes (the scarce-label experiment's plot).

Reads every avdp-eval `summary.json` below `--evals` whose folder is named
`<arm>_n<N>_<anything>`: `<arm>` is the curve (e.g. `pl` for the pseudo-label arm, `uwm` for the
video policy), `N` the action-free episodes that arm's training saw; the task and the scene
distribution come from the summary itself. Draws one panel per scene distribution, one line per
arm and task with binomial standard errors, and prints the same figures as a Markdown table.

    python bench/free_video_curve.py --evals runs/v17/free/test --out docs/images/free_video.png \
        --label pl="pseudo-labels + action-only" --label uwm="video policy (UWM)"
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^(?P<arm>.+?)_n(?P<n>\d+)_")


def collect(root: Path) -> dict[tuple[str, str, str], list[tuple[int, float, int]]]:
    """{(arm, scenes, task): [(N, success rate, episodes), ...] sorted by N}."""
    curves: dict[tuple[str, str, str], list[tuple[int, float, int]]] = defaultdict(list)
    for path in sorted(root.glob("*/summary.json")):
        m = NAME.match(path.parent.name)
        if m is None:
            continue
        s = json.loads(path.read_text())
        if "success_rate" not in s:
            continue  # another tool's summary
        key = (m["arm"], s.get("appearance", "nominal"), s["task"])
        curves[key].append((int(m["n"]), float(s["success_rate"]), int(s["episodes"])))
    if not curves:
        raise SystemExit(f"no <arm>_n<N>_... evaluation with a summary.json below {root}")
    return {k: sorted(v) for k, v in curves.items()}


def se(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5


def table(curves, labels: dict[str, str]) -> str:
    rows = ["| arm | scenes | task | action-free episodes: success % (s.e., n) |", "| --- | --- | --- | --- |"]
    for (arm, scenes, task), pts in sorted(curves.items()):
        cells = ", ".join(f"{n}: {100 * p:.0f} ({100 * se(p, e):.1f}, {e})" for n, p, e in pts)
        rows.append(f"| {labels.get(arm, arm)} | {scenes} | {task} | {cells} |")
    return "\n".join(rows)


def draw(curves, labels: dict[str, str], title: str, out: Path) -> None:
    """One panel per scene distribution, one line per arm and task, ± binomial s.e."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = sorted({k[1] for k in curves}, key=lambda s: (s != "nominal", s))
    arms = sorted({k[0] for k in curves})
    fig, axes = plt.subplots(1, len(scenes), figsize=(6 * len(scenes), 4.2), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, sc in zip(axes[0], scenes):
        for (arm, s, task), pts in sorted(curves.items()):
            if s != sc:
                continue
            ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * se(p[1], p[2]) for p in pts],
                        marker="o" if task == "push" else "s", capsize=3, linestyle="-" if task == "push" else "--",
                        color=colours[arms.index(arm) % len(colours)], label=f"{labels.get(arm, arm)}, {task}")
        ax.set_title(f"{sc} scenes", fontsize=10)
        ax.set_xlabel("action-free episodes (randomised scenes)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("success % (test seeds, ± s.e.)")
    legend = {}  # every arm and task once, whichever panel drew it
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    cols = min(3, len(legend))
    rows = -(-len(legend) // cols)
    fig.set_figheight(4.2 + 0.22 * rows)
    fig.legend(legend.values(), legend.keys(), fontsize=8, loc="lower center", ncol=cols)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.22 * rows / (4.2 + 0.22 * rows) + 0.02, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", type=Path, required=True, help="folder of <arm>_n<N>_... avdp-eval outputs")
    ap.add_argument("--out", type=Path, default=Path("docs/images/free_video.png"))
    ap.add_argument("--label", action="append", default=[], metavar="ARM=TEXT", help="legend text of an arm")
    ap.add_argument("--title", default="Scarce labels: success against action-free episodes")
    a = ap.parse_args(argv)
    labels = dict(x.split("=", 1) for x in a.label)
    curves = collect(a.evals)
    print(table(curves, labels))
    draw(curves, labels, a.title, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
