"""avdp-attach-tokenizer: a policy checkpoint with its tokenizer replaced by an
appearance-invariant one, without training the policy.

`avdp-train-tokenizer --target-look nominal --init POLICY` trains an encoder that gives any scene
look POLICY's own latents of the nominal scene; its decoder and latent scale are POLICY's. So
POLICY reads the new encoder's latents as they are, and this writes POLICY with it:

    avdp-attach-tokenizer --policy models/avdp_default --tokenizer runs/inv/tokenizer/latest \
        --out runs/inv/policy

Refused unless the tokenizer was trained against exactly POLICY's tokenizer (the fingerprint its
checkpoint records): with any other, the latents would mean something else to the policy, and
the way to move a policy onto it is a fine-tune (`avdp-train-baseline --init POLICY --tokenizer T`).

`--blend A` attaches the weights POLICY's own + A x (new - own) instead, a point on the line
between the two (weight-space ensembling, as WiSE-FT does for fine-tuned models): the new
encoder was trained from POLICY's, so the two lie in one basin, and part of the way keeps more of
the old encoder's exactness on the looks it already read (docs/appearance.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace


def attach(policy: str | Path, tokenizer: str | Path, out: str | Path, blend: float = 1.0) -> Path:
    """Write `policy` with `tokenizer`'s weights (`blend` < 1: own + blend x (new - own)) to `out`;
    ValueError when the tokenizer was not trained (`--target-look`) against `policy`'s own tokenizer."""
    if not (math.isfinite(blend) and 0.0 < blend <= 1.0):
        raise ValueError(f"--blend {blend}: expected in (0, 1] (the fraction of the way to the new encoder)")
    from avdp_ros.model.checkpoint import load_checkpoint
    from avdp_ros.model.kinds import KINDS
    from avdp_ros.train.sources import frozen_tokenizer

    states, meta = load_checkpoint(policy)
    if meta["kind"] not in KINDS or not KINDS[meta["kind"]].policy:
        raise ValueError(f"--policy {policy}: a '{meta['kind']}' checkpoint; expected a policy that reads a tokenizer")
    tstates, tmeta = load_checkpoint(tokenizer, expected_kind="tokenizer")
    target = tmeta["extra"].get("target_look")
    if not target:
        raise ValueError(f"--tokenizer {tokenizer} was not trained with --target-look: its latents are not "
                         f"{policy}'s; fine-tune the policy onto it instead (avdp-train-baseline --init POLICY "
                         "--tokenizer T)")
    own = frozen_tokenizer(meta["config"]["tokenizer"], states["tokenizer"], "cpu", f"{policy}: tokenizer")
    if own.fingerprint() != target["reference_fingerprint"]:
        raise ValueError(f"--tokenizer {tokenizer} learned the latents of {target['reference']}, not of {policy}'s "
                         "tokenizer (the weights' fingerprints differ)")
    # the same architecture and latent scale: the config differs at most in nothing the policy reads
    new = frozen_tokenizer(tmeta["config"], tstates["tokenizer"], "cpu", f"{tokenizer}")
    if blend < 1.0:
        new.load_state_dict(lerp_states(own.state_dict(), new.state_dict(), blend))
    states = dict(states, tokenizer=new.state_dict())
    config = dict(meta["config"], tokenizer=tmeta["config"])
    extra = dict(meta["extra"], attached_tokenizer={"path": str(tokenizer), "fingerprint": new.fingerprint(),
                                                    "target_look": target["look"], "blend": blend})
    return write_policy(out, meta["kind"], states, config, extra)


def lerp_states(start: dict, end: dict, alpha: float) -> dict:
    """The state dict start + alpha x (end - start); tensors that are not floating point (counters) are end's."""
    return {k: (start[k] + alpha * (v - start[k]) if v.is_floating_point() else v) for k, v in end.items()}


def write_policy(out: str | Path, kind: str, states: dict, config: dict, extra: dict) -> Path:
    """save_checkpoint for state dicts (it takes modules): a checkpoint rebuilt from parts."""
    from avdp_ros.model.checkpoint import save_checkpoint

    modules = {name: SimpleNamespace(state_dict=lambda s=s: s) for name, s in states.items()}
    return save_checkpoint(out, kind, modules, config, extra)


def attach_cli(argv: list[str] | None, prog: str, doc: str, part: str, part_help: str, attach_fn, done: str,
               options=lambda ap: ()) -> int:
    """The CLI of an avdp-attach-* tool: --policy, --<part>, --out (a new folder) and what
    `options(parser)` adds (it returns the dests, passed on to `attach_fn` by name); `done` is
    formatted with the policy and the part."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="policy checkpoint directory")
    ap.add_argument(f"--{part}", required=True, help=part_help)
    ap.add_argument("--out", required=True, type=Path, help="directory of the new policy checkpoint")
    extra = options(ap)
    a = ap.parse_args(argv)
    if a.out.exists() and any(a.out.iterdir()):
        ap.error(f"--out {a.out} exists and is not empty")
    try:
        path = attach_fn(a.policy, getattr(a, part), a.out, **{k: getattr(a, k) for k in extra})
    except ValueError as err:
        ap.error(str(err))
    print(f"wrote {path}: " + done.format(policy=a.policy, part=getattr(a, part)))
    return 0


def main(argv: list[str] | None = None) -> int:
    def options(ap: argparse.ArgumentParser) -> tuple[str, ...]:
        ap.add_argument("--blend", type=float, default=1.0, metavar="A",
                        help="attach POLICY's encoder + A x (the new one - it), A in (0, 1] (default %(default)s: "
                             "the new encoder as trained)")
        return ("blend",)

    return attach_cli(argv, "avdp-attach-tokenizer", __doc__, "tokenizer",
                      "tokenizer trained with --target-look --init POLICY", attach,
                      "{policy} reading the encoder of {part}", options)


if __name__ == "__main__":
    sys.exit(main())
