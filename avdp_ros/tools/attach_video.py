"""avdp-attach-video: a video + IDM policy with its video model replaced by another, without
training the IDM.

An IDM whose head was trained on true futures (`avdp-train-idm --head uwm`: no video features)
never read its video model's output in training, so a video model trained further (or better)
can be swapped in as it is; the policy then plans from the new model's predictions:

    avdp-attach-video --policy runs/uwm/latest --video runs/video/latest --out runs/uwm_v2

Refused unless both read the same tokenizer (its weights' fingerprint) and agree on everything the
video model's input and output are made of (latent shape, cameras, frame counts, vocabulary,
architecture; not how it was trained: its noise levels may differ), and for an IDM that reads
what its own video model computes: features (the teacher head's `idm.video_feature_dim`) or
tokens (`--head vpp` / `shared`): it learned to read the old model's, so it needs retraining.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHARED = ("latent_shape", "cameras", "context_frames", "future_frames", "instructions", "video")
# VideoConfig fields that set how the video model was trained, not what it computes: may differ
VIDEO_TRAINING = ("logit_normal_t", "clean_prefix_prob", "context_noise", "rollout_prob")


def _shared(cfg: dict) -> dict:
    """What the policy and the video model must agree on, through the dataclass: a checkpoint
    written before a field existed reads its default."""
    from avdp_ros.model.config import PolicyConfig

    d = PolicyConfig.from_dict(cfg).to_dict()
    d["video"] = {k: v for k, v in d["video"].items() if k not in VIDEO_TRAINING}
    return {k: d[k] for k in SHARED}


def attach(policy: str | Path, video: str | Path, out: str | Path) -> Path:
    """Write `policy` with `video`'s video model and state statistics to `out`; ValueError where
    they do not fit (see the module docstring)."""
    from avdp_ros.model.checkpoint import load_checkpoint
    from avdp_ros.tools.attach_tokenizer import write_policy
    from avdp_ros.train.sources import frozen_tokenizer

    states, meta = load_checkpoint(policy)
    if meta["kind"] != "idm":
        raise ValueError(f"--policy {policy}: a '{meta['kind']}' checkpoint; expected a video + IDM policy (idm)")
    if meta["config"]["idm"].get("video_feature_dim", 0):
        raise ValueError(f"--policy {policy} reads the features of its own video model (idm.video_feature_dim "
                         f"{meta['config']['idm']['video_feature_dim']}); retrain it on the new one "
                         "(avdp-train-idm --video), or train a head without them (--head uwm)")
    if meta["config"]["idm"].get("future_input", "frames") == "tokens":
        raise ValueError(f"--policy {policy} reads its own video model's hidden states (idm.future_input "
                         "'tokens'), which another video model computes differently; retrain it on the new "
                         "one (avdp-train-idm --video), or train a head that reads frames (--head uwm)")
    vstates, vmeta = load_checkpoint(video, expected_kind="video")
    mine, theirs = _shared(meta["config"]), _shared(vmeta["config"])
    differ = [k for k in SHARED if mine[k] != theirs[k]]
    if differ:
        raise ValueError(f"--video {video} differs from {policy} in {differ}: "
                         + "; ".join(f"{k}: {theirs[k]} vs {mine[k]}" for k in differ))
    own, new = (frozen_tokenizer(m["config"]["tokenizer"], s["tokenizer"], "cpu", f"{p}: tokenizer").fingerprint()
                for p, s, m in ((policy, states, meta), (video, vstates, vmeta)))
    if own != new:
        raise ValueError(f"--video {video} was trained on another tokenizer's latents than {policy} "
                         f"(fingerprints {new} vs {own})")
    states = dict(states, video=vstates["video"], video_state_norm=vstates["state_norm"])
    extra = dict(meta["extra"], attached_video={"path": str(video), "step": vmeta["extra"].get("step")})
    config = dict(meta["config"], video=vmeta["config"]["video"])  # the config of the video model it now holds
    return write_policy(out, meta["kind"], states, config, extra)


def main(argv: list[str] | None = None) -> int:
    from avdp_ros.tools.attach_tokenizer import attach_cli

    return attach_cli(argv, "avdp-attach-video", __doc__, "video",
                      "video model checkpoint (avdp-train-video) on the same tokenizer", attach,
                      "{policy} planning from the predictions of {part}")


if __name__ == "__main__":
    sys.exit(main())
