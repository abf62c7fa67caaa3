"""avdp-blend-policy: a policy checkpoint part of the way from a policy to its fine-tune, in weight space.

    avdp-blend-policy --policy runs/inv/encoder --tuned runs/inv/finetune/latest --alpha 0.5 \
        --out runs/inv/ftblend

writes the weights POLICY + ALPHA x (TUNED - POLICY) of every module, with TUNED's config. This is
WiSE-FT (Wortsman et al., CVPR 2022): a fine-tune and the model it started from lie in one basin,
and a point between them keeps much of what the fine-tune gained while losing less of what the
start could do. Here the policy fine-tuned onto a new invariant encoder's latents gained push on
held-out tables and lost pick_place; half-way it kept the gain and most of pick_place
(docs/appearance.md).

Refused unless TUNED is a fine-tune of POLICY's architecture reading exactly POLICY's tokenizer:
the action head is what moves, and a head between two heads reading different latents would read
neither. Blending encoders is `avdp-attach-tokenizer --blend`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from avdp_ros.tools.attach_tokenizer import attach_cli, lerp_states, write_policy


def blend(policy: str | Path, tuned: str | Path, out: str | Path, alpha: float = 0.5) -> Path:
    """Write `policy` + `alpha` x (`tuned` - `policy`) to `out`; ValueError when the two are not the
    same kind and config or do not read the same tokenizer."""
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"--alpha {alpha}: expected in (0, 1) (the fraction of the way to the fine-tune; 0 and 1 "
                         "are the two checkpoints themselves)")
    import torch

    from avdp_ros.model.checkpoint import load_checkpoint
    from avdp_ros.model.config import PolicyConfig
    from avdp_ros.model.kinds import KINDS

    start, smeta = load_checkpoint(policy)
    end, emeta = load_checkpoint(tuned)
    if smeta["kind"] not in KINDS or not KINDS[smeta["kind"]].policy:
        raise ValueError(f"--policy {policy}: a '{smeta['kind']}' checkpoint; expected a policy")
    if emeta["kind"] != smeta["kind"]:
        raise ValueError(f"--tuned {tuned}: a '{emeta['kind']}' checkpoint; expected '{smeta['kind']}' as --policy")
    # the same architecture: configs compared as loaded, so fields a newer version filled in do not count
    a, b = (PolicyConfig.from_dict(m["config"]).to_dict() for m in (smeta, emeta))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if differ:
        raise ValueError(f"--tuned {tuned}: its config differs from --policy's in {differ}; expected a fine-tune "
                         "of --policy (avdp-train-baseline --init POLICY)")
    if any(not torch.equal(v, end["tokenizer"][k]) for k, v in start["tokenizer"].items()):
        raise ValueError(f"--tuned {tuned} reads another tokenizer than --policy {policy}; a blended head would "
                         "read latents neither head was trained on")
    states = {name: lerp_states(start[name], end[name], alpha) for name in end}
    extra = dict(emeta["extra"], blended_from={"policy": str(policy), "tuned": str(tuned), "alpha": alpha})
    return write_policy(out, emeta["kind"], states, emeta["config"], extra)


def main(argv: list[str] | None = None) -> int:
    def options(ap) -> tuple[str, ...]:
        ap.add_argument("--alpha", type=float, default=0.5, metavar="A",
                        help="the fraction of the way from --policy to --tuned, in (0, 1) (default %(default)s)")
        return ("alpha",)

    return attach_cli(argv, "avdp-blend-policy", __doc__, "tuned", "a fine-tune of --policy (its latest/ folder)",
                      blend, "{policy} moved part of the way to {part}", options)


if __name__ == "__main__":
    sys.exit(main())
