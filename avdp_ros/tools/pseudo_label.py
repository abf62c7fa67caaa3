"""avdp-pseudo-label: action labels for action-free video, written by an inverse dynamics model.

The pipeline of the research proposal (papers/000): action-free video trains the video model,
the few labelled episodes train the IDM, and the IDM can in turn label the action-free episodes
so an action-only policy learns from all of them. For every frame t of every episode the IDM
reads the true frames t+1..t+K (the episode's own future, clean: flow time 0 for the UWM head)
and plans a chunk from frame t; its first action, the target due at t, is the label. The output
is a dataset in the converter's format (same frames, proprio and stamps, one action per
observation), so the training CLIs take it like any other:

    avdp-pseudo-label --idm runs/v17/uwm/latest --data runs/free/dataset --out runs/free_labelled

Where an episode already has labels, the summary reports the pseudo labels' error against them
(the IDM's labelling accuracy); the output holds the pseudo labels either way. Needs an IDM that
reads future frames (`--head teacher` or `uwm`; a `vpp` head reads no frames).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def label_episode(policy, ep: dict, instruction: str, batch: int = 64) -> np.ndarray:
    """(T, 8) pose7 + width: the IDM's first action at every frame, from the episode's true future."""
    from avdp_ros.model.idm import ActionBatch
    from avdp_ros.model.rotation import pose9_to_pose7, pose_to_state10

    cfg, tok, actor = policy.cfg, policy.tokenizer, policy.actor
    T = len(ep["ee_pose"])
    lat = torch.stack([torch.cat([tok.encode(tok.camera_images(np.asarray(ep[c][i:i + 128]), c))
                                  for i in range(0, T, 128)]) for c in cfg.cameras], dim=1)  # (T, cams, C, h, w)
    states = torch.from_numpy(pose_to_state10(np.asarray(ep["ee_pose"], np.float32),
                                              np.asarray(ep["gripper"], np.float32)))  # (T, 10)
    instr = cfg.instruction_index(instruction)
    out = []
    for s in range(0, T, batch):
        t = torch.arange(s, min(s + batch, T))
        ctx = lat[(t[:, None] + torch.arange(-cfg.context_frames + 1, 1)).clamp(0, T - 1)]  # (B, Fc, ...)
        fut = lat[(t[:, None] + torch.arange(1, cfg.future_frames + 1)).clamp(0, T - 1)]  # (B, K, ...)
        b = ActionBatch(context=ctx, state=actor.state_norm.normalize(states[t]),
                        instr=torch.full((len(t),), instr, dtype=torch.long), future=fut)
        if actor.noised_future:
            b = actor.noise_future(b, torch.zeros(len(t)))  # flow time 0: the true future, clean
        a = actor.unnormalize_actions(actor.sample(b, noise=torch.zeros(len(t), cfg.horizon, 10)), states[t])
        out.append(torch.cat([pose9_to_pose7(a[:, 0, :9]), a[:, 0, 9:10]], dim=-1))
    return torch.cat(out).numpy().astype(np.float32)


def pseudo_label(idm: str | Path, roots: list[str | Path], out: str | Path, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Write every episode of `roots` with IDM labels into the dataset `out`; returns a summary."""
    from tqdm import tqdm

    from avdp_ros.data.convert import ConvertConfig
    from avdp_ros.data.dataset import EpisodeDataset, prepare_output, write_episode, write_manifest
    from avdp_ros.model.policy import Policy
    from avdp_ros.model.rotation import pose_to_state10
    from avdp_ros.train.metrics import action_errors

    policy = Policy.from_checkpoint(idm)
    if policy.video is None or not policy.actor.reads_frames:
        reads = policy.cfg.idm.future_input if policy.video is not None else "no future"
        raise ValueError(f"--idm {idm}: a {policy.kind} policy reading {reads}; expected an inverse dynamics "
                         "model that reads future frames (avdp-train-idm --head teacher or uwm)")
    sources = [EpisodeDataset(r) for r in roots]
    hz = {float(ds.manifest["obs_hz"]) for ds in sources}
    if len(hz) > 1 or abs(next(iter(hz)) - policy.cfg.obs_hz) > 1e-9:
        raise ValueError(f"--data observation rates {sorted(hz)} Hz: expected all at the IDM's {policy.cfg.obs_hz} Hz")
    out = prepare_output(out, overwrite)
    ccfg = ConvertConfig(obs_hz=policy.cfg.obs_hz, action_hz=policy.cfg.obs_hz, image_size=sources[0].image_size,
                         cameras=dict(sources[0].manifest["cameras"]))
    entries, errors = [], []
    for ds in sources:
        for i in tqdm(range(len(ds)), desc=f"pseudo-label {ds.root.parent.name}", disable=not progress):
            ep, entry = ds[i], ds.episodes[i]
            labels = label_episode(policy, ep, entry.get("instruction", ""))  # (T, 8)
            if ep["action"] is not None:  # the true labels at the observation rate: how good is the IDM?
                true = np.asarray(ep["action"])[::ds.action_ratio]
                errors.append(action_errors(torch.from_numpy(pose_to_state10(labels[:, :7], labels[:, 7])),
                                            torch.from_numpy(pose_to_state10(true[:, :7], true[:, 7]))))
            src = ds.root / "episodes" / entry["name"]
            linked = {c: src / f"{c}.npy" for c in ds.cameras if (src / f"{c}.npy").is_file()}  # frames as they are
            arrays = {c: np.asarray(ep[c]) for c in ds.cameras if c not in linked}
            arrays.update(ee_pose=np.asarray(ep["ee_pose"]), gripper=np.asarray(ep["gripper"]),
                          stamps=np.asarray(ep["stamps"]), action=labels)
            new = {k: v for k, v in entry.items() if k not in ("files", "name")}
            new.update(has_actions=True, chunk_horizon=None, action_topic=f"pseudo-label (IDM {idm})",
                       gripper_action_topic=f"pseudo-label (IDM {idm})")
            meta = dict(ep["meta"], pseudo_label={"idm": str(idm), "source": str(ds.root / "episodes" / entry["name"]),
                                                  "had_labels": ep["action"] is not None})
            entries.append(write_episode(out / "episodes" / f"{ds.root.parent.name}_{entry['name']}", arrays, new,
                                         {"metadata": meta}, linked))
            write_manifest(out, ccfg, entries, [], source=f"avdp-pseudo-label --idm {idm}")
    summary = {"episodes": len(entries), "out": str(out), "idm": str(idm)}
    if errors:  # mean over labelled episodes
        summary["error_vs_true_labels"] = {k: float(np.mean([e[k] for e in errors])) for k in errors[0]}
        summary["labelled_episodes_compared"] = len(errors)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="avdp-pseudo-label", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idm", required=True, help="video + IDM policy checkpoint whose IDM reads future frames")
    ap.add_argument("--data", nargs="+", required=True, help="converted datasets to label (action-free or not)")
    ap.add_argument("--out", required=True, type=Path, help="the labelled dataset (a new folder)")
    ap.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        summary = pseudo_label(a.idm, a.data, a.out, a.overwrite, progress=not a.no_progress)
    except (ValueError, FileExistsError) as err:
        ap.error(str(err))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
