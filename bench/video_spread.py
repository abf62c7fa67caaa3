"""How good, and how varied, are a video model's predicted frames? (a diagnostic, not a test)

On windows of recorded episodes (the checkpoint's own validation episodes where it records them),
for each number of Euler steps per frame: the video model predicts the K frames after each
window's context from `--seeds` different noises, and the table gives, per frame ahead (1..K):

- `sample MSE`: latent MSE of one sample against the true future (latents have unit variance);
- `one-ahead MSE`: the same when frame j is predicted from the *true* frames before it (teacher
  forcing: context + true frames 1..j-1, one frame sampled at the same position). The rollout's
  excess over it is drift: error compounding through the model's own predicted frames, what
  context-noise augmentation and rollout losses address; the rest is the future's uncertainty;
- `mean MSE`: the same for the mean of the samples;
- `spread`: the standard deviation across samples (latent units): ~0 means the sampler returns one
  frame whatever the noise (at 1 step from noise a flow model returns its conditional mean);
- `PSNR` (dB) and `object L1` (train/metrics.object_l1: the cube and the target) of one decoded
  sample against the real frame, and the tokenizer's own PSNR (the ceiling).

    python bench/video_spread.py --video runs/v17/video/latest --data runs/inv/pairs_push/dataset \
        runs/inv/pairs_pick_place/dataset --out docs/video_spread.json

Also takes a video + IDM policy checkpoint (its video model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def load_video(path: str):
    """(cfg, tokenizer, video model, state normaliser) of a video or idm checkpoint."""
    from avdp_ros.deploy.backends import checkpoint_dir
    from avdp_ros.model.checkpoint import load_checkpoint, load_into
    from avdp_ros.model.config import STATE_DIM, PolicyConfig
    from avdp_ros.model.idm import Normalizer
    from avdp_ros.model.tokenizer import checkpoint_tokenizer
    from avdp_ros.model.video import VideoModel

    path = checkpoint_dir(path) or Path(path)
    states, meta = load_checkpoint(path)
    if meta["kind"] not in ("video", "idm"):
        raise SystemExit(f"{path}: a '{meta['kind']}' checkpoint; expected a video model or a video + IDM policy")
    cfg = PolicyConfig.from_dict(meta["config"])
    video, norm = VideoModel(cfg), Normalizer(STATE_DIM)
    load_into(video, states["video"], f"{path}: video")
    load_into(norm, states["state_norm" if meta["kind"] == "video" else "video_state_norm"], f"{path}: state norm")
    return cfg, checkpoint_tokenizer(path), video.eval(), norm, meta["extra"].get("val_episodes")


@torch.no_grad()
def measure(video, norm, tok, cfg, ds, idx: list[int], steps: int, seeds: int, real: torch.Tensor) -> dict:
    """Per frame ahead: sample / mean MSE, spread, PSNR, object L1 (see the module docstring)."""
    from avdp_ros.train.data import decode_frames, stack_windows
    from avdp_ros.train.metrics import object_l1, psnr

    b = stack_windows(ds, idx, torch.device("cpu"))
    state = norm.normalize(b["states"][:, :cfg.context_frames])
    K = cfg.future_frames
    g = torch.Generator().manual_seed(0)
    samples = torch.stack([video.rollout(b["context"], b["instr"], state, k=K, steps=steps,
                                         noise=torch.randn(b["future"].shape, generator=g))[0]
                           for _ in range(seeds)])  # (S, N, K, cams, C, h, w)
    truth = b["future"]
    per = lambda x: x.transpose(0, 1).flatten(1).mean(1)  # noqa: E731  (N, K, ...) -> (K,)
    imgs = decode_frames(tok, samples[0])  # (N, K, cams, 3, S, S)
    g = torch.Generator().manual_seed(0)  # the first sample's noise again, frame by frame
    noise0 = torch.randn(b["future"].shape, generator=g)
    one_ahead = torch.cat([video.rollout(torch.cat([b["context"], truth[:, :j]], dim=1), b["instr"], state, k=1,
                                         steps=steps, noise=noise0[:, j:j + 1])[0] for j in range(K)], dim=1)
    out = {"sample_mse": per((samples[0] - truth) ** 2), "one_ahead_mse": per((one_ahead - truth) ** 2),
           "mean_mse": per((samples.mean(0) - truth) ** 2),
           "spread": per(samples.std(0)) if seeds > 1 else torch.zeros(K)}
    out["psnr"] = torch.stack([psnr(imgs[:, j].flatten(0, 1), real[:, j].flatten(0, 1)).mean() for j in range(K)])
    out["object_l1"] = torch.stack([object_l1(imgs[:, j].flatten(0, 1), real[:, j].flatten(0, 1)).nanmean()
                                    for j in range(K)])
    return {k: [round(float(x), 4) for x in v] for k, v in out.items()}


def real_future(ds, tok, cfg, idx: list[int], nominal: bool = True) -> torch.Tensor:
    """Real frames t+1..t+K of windows `idx` as (N, K, cams, 3, S, S) in [0, 1], as the tokenizer's
    decoder should show them: an appearance-invariant tokenizer (trained with --target-look) decodes
    every scene as the nominal one, so with `nominal`, where an episode stores its frames' nominal
    views (`<camera>_nominal`, avdp-dagger --nominal-pairs), those are the truth."""
    from avdp_ros.model.tokenizer import resize_uint8

    S, out = tok.config.image_size, []
    for i in idx:
        e, t, _ = ds.index[i]
        ref = ds.refs[e]
        folder = Path(ref.root) / "episodes" / ref.name
        frames = np.clip(np.arange(t + 1, t + cfg.future_frames + 1), 0, ref.length - 1)
        cams = []
        for c in cfg.cameras:
            view = folder / f"{c}_nominal.npy"
            video = np.load(view if nominal and view.exists() else folder / f"{c}.npy", mmap_mode="r")
            cams.append(torch.as_tensor(resize_uint8(np.asarray(video[frames]), S, tok.config.crops.get(c))))
        out.append(torch.stack(cams, dim=1).float() / 255.0)  # (K, cams, 3, S, S)
    return torch.stack(out)


def main() -> None:
    from avdp_ros.data.latents import LatentDataset, cache_latents
    from avdp_ros.train.data import decode_frames, stack_windows
    from avdp_ros.train.metrics import psnr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True, help="video checkpoint (or a video + IDM policy)")
    ap.add_argument("--data", nargs="+", required=True, help="converted datasets to draw windows from")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=4, help="noise draws per window")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--all-episodes", action="store_true",
                    help="draw from every episode, not only the checkpoint's validation episodes")
    ap.add_argument("--truth", choices=("nominal", "real"), default="nominal",
                    help="what decoded frames are compared with where an episode has nominal views: those "
                         "(default; an appearance-invariant tokenizer decodes every look as the nominal one) "
                         "or the frames as recorded")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg, tok, video, norm, val_eps = load_video(a.video)
    caches = [(r, cache_latents(r, tok, progress=False)) for r in a.data]
    keep = None if a.all_episodes or not val_eps else val_eps
    ds = LatentDataset(caches, cfg.context_frames, cfg.future_frames, cfg.horizon, cfg.instructions,
                       cameras=cfg.cameras, episodes=keep)
    if len(ds) == 0:
        raise SystemExit(f"no windows: none of the checkpoint's validation episodes is in {a.data} "
                         "(pass the data it was trained on, or --all-episodes)")
    rng = np.random.default_rng(0)
    idx = sorted(rng.choice(len(ds), size=min(a.windows, len(ds)), replace=False).tolist())
    real = real_future(ds, tok, cfg, idx, nominal=a.truth == "nominal")
    with torch.no_grad():
        recon = decode_frames(tok, stack_windows(ds, idx, torch.device("cpu"))["future"])
    ceiling = [round(float(psnr(recon[:, j].flatten(0, 1), real[:, j].flatten(0, 1)).mean()), 2)
               for j in range(cfg.future_frames)]
    rows = {s: measure(video, norm, tok, cfg, ds, idx, s, a.seeds, real) for s in a.steps}
    K = cfg.future_frames
    print(f"{len(idx)} windows from {len(set(ds.index[i][0] for i in idx))} episodes, {a.seeds} samples each; "
          f"tokenizer PSNR (ceiling) {ceiling}")
    print("| steps | " + " | ".join(f"{m} (1..{K} ahead)" for m in
                                     ("sample MSE", "one-ahead MSE", "mean MSE", "spread", "PSNR dB", "object L1"))
          + " |")
    print("| --- " * 7 + "|")
    for s, r in rows.items():
        print(f"| {s} | " + " | ".join(" / ".join(f"{x:.3g}" for x in r[k]) for k in
                                       ("sample_mse", "one_ahead_mse", "mean_mse", "spread", "psnr", "object_l1"))
              + " |")
    if a.out:
        a.out.write_text(json.dumps({"video": a.video, "windows": len(idx), "seeds": a.seeds,
                                     "tokenizer_psnr": ceiling, "by_steps": rows}, indent=2))


if __name__ == "__main__":
    main()
