"""Training CLIs: tokenizer, video model, inverse dynamics (IDM) and the action-only baseline.

    avdp-train-tokenizer --data DS [DS ...] --out runs/tok --preset base
    avdp-train-video     --data DS [DS ...] --tokenizer runs/tok/latest --out runs/video
    avdp-train-idm       --data DS [DS ...] --video runs/video/latest --out runs/idm --label-fraction 0.5
    avdp-train-baseline  --data DS [DS ...] --tokenizer runs/tok/latest --out runs/base

Every run writes `<out>/latest/`, `<out>/history.json` and `<out>/loss.png` (layout:
`avdp_ros/train/engine.py`); `--resume` continues from `<out>/latest`; under
`torchrun --nproc_per_node N` the same commands train with DDP. What each checkpoint holds is
`avdp_ros/model/kinds.py`; each kind's job is in `avdp_ros/train/jobs/`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from avdp_ros.train.jobs import JOBS


def main_tokenizer(argv: Sequence[str] | None = None) -> int:
    """avdp-train-tokenizer: train the AutoencoderKL tokenizer, then set its latent_scale."""
    return JOBS["tokenizer"]().main(argv)


def main_video(argv: Sequence[str] | None = None) -> int:
    """avdp-train-video: train the autoregressive latent video model on every episode."""
    return JOBS["video"]().main(argv)


def main_idm(argv: Sequence[str] | None = None) -> int:
    """avdp-train-idm: train InverseDynamics on action-labelled episodes (frozen video model)."""
    return JOBS["idm"]().main(argv)


def main_baseline(argv: Sequence[str] | None = None) -> int:
    """avdp-train-baseline: train ActionOnlyPolicy (same backbone, past frames only)."""
    return JOBS["baseline"]().main(argv)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in JOBS:
        raise SystemExit(f"usage: python -m avdp_ros.tools.train {{{','.join(JOBS)}}} ...")
    sys.exit(JOBS[sys.argv[1]]().main(sys.argv[2:]))
