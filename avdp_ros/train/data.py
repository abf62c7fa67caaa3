"""What a training job reads: dataset roots, the seeded episode split, in-memory image sets for
the tokenizer, latent windows (and frozen video features) for the video model and action heads.

The episode split depends only on `--seed` and `--val-fraction`, so video, IDM and baseline runs
hold out the same episodes.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.data.files import file_sha256
from avdp_ros.data.latents import LatentDataset, build_vocabulary, cache_latents, cache_views, list_episodes
from avdp_ros.model.tokenizer import Tokenizer, resize_uint8
from avdp_ros.train.engine import Dist
from avdp_ros.train.sources import policy_config

VAL_WINDOWS = 64      # validation windows per evaluation (video / idm / baseline)


def split_keys(keys: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded episode-level split -> (train, val); at least one val episode when val_fraction > 0."""
    keys = sorted(keys)
    rng = random.Random(seed)
    rng.shuffle(keys)
    n_val = 0 if val_fraction <= 0 else max(1, round(len(keys) * val_fraction))
    n_val = min(n_val, max(len(keys) - 1, 0))
    return sorted(keys[n_val:]), sorted(keys[:n_val])


def label_subset(keys: list[str], fraction: float, seed: int) -> list[str]:
    """Seeded subset of `fraction` of `keys` (at least one when fraction > 0)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--label-fraction {fraction}: expected in (0, 1]")
    keys = sorted(keys)
    rng = random.Random(seed + 1)  # independent of the val split's shuffle
    rng.shuffle(keys)
    return sorted(keys[:max(1, round(len(keys) * fraction))])


def data_record(roots: Sequence[Path]) -> list[dict[str, Any]]:
    return [{"root": str(r.resolve()), "manifest_sha256": file_sha256(r / "manifest.json")} for r in roots]


def check_roots(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Dataset roots and their common camera list (all roots must have the same cameras)."""
    roots = [Path(p).expanduser() for p in paths]
    cams = None
    for r in roots:
        ds = EpisodeDataset(r, validate=False)
        if cams is not None and ds.cameras != cams:
            raise SystemExit(f"--data {r}: cameras {ds.cameras}, but {roots[0]} has {cams}")
        cams = ds.cameras
    return roots, list(cams or [])


def split_episodes(roots: Sequence[Path], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    keys = [ref.key for ref in list_episodes(roots)]
    return split_keys(keys, args.val_fraction, args.seed)


# -- tokenizer images -------------------------------------------------------------------------


class ImageSet(torch.utils.data.Dataset):
    """Every frame of every camera of the given episodes, cropped (`crops`: camera -> fractions)
    and resized once to (3, S, S) uint8 in memory. `camera[i]`: the camera image i is from."""

    def __init__(self, roots: Sequence[Path], keys: set[str], size: int, stride: int = 1,
                 crops: dict[str, Sequence[float]] | None = None) -> None:
        chunks, self.camera = [], []
        datasets = {r: EpisodeDataset(r, validate=False) for r in roots}
        for ref in list_episodes(roots):
            if ref.key not in keys:
                continue
            ds = datasets[ref.root]
            ep = ds[ref.name]
            for cam in ds.cameras:
                frames = np.asarray(ep[cam][::stride])
                chunks.append(resize_uint8(frames, size, (crops or {}).get(cam)))  # (T', 3, S, S)
                self.camera += [cam] * len(frames)
        self.images = torch.cat(chunks) if chunks else torch.zeros(0, 3, size, size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class PairSet(torch.utils.data.Dataset):
    """(frame, the same frame as the nominal scene shows it) pairs, cropped and resized once to
    (3, S, S) uint8: what an appearance-invariant tokenizer learns from. Episodes recorded with
    `avdp-dagger --nominal-pairs` hold both (`<camera>_nominal.npy`). Each nominal frame is also
    its own pair, so the nominal look maps to itself. Item i = (input, target index); the targets
    are `self.targets`, several inputs share one target. `camera[i]`: the camera input i is from."""

    def __init__(self, roots: Sequence[Path], keys: set[str], size: int, stride: int = 1,
                 crops: dict[str, Sequence[float]] | None = None) -> None:
        inputs, targets, index, self.camera = [], [], [], []
        datasets = {r: EpisodeDataset(r, validate=False) for r in roots}
        self.skipped = 0  # episodes without nominal pairs
        for ref in list_episodes(roots):
            if ref.key not in keys:
                continue
            ds = datasets[ref.root]
            folder = ds.episode_dir(ref.name)
            if not all((folder / f"{cam}_nominal.npy").exists() for cam in ds.cameras):
                self.skipped += 1
                continue
            ep = ds[ref.name]
            for cam in ds.cameras:
                crop = (crops or {}).get(cam)
                target = resize_uint8(np.load(folder / f"{cam}_nominal.npy", mmap_mode="r")[::stride], size, crop)
                first = sum(len(t) for t in targets)
                rows = torch.arange(first, first + len(target))
                inputs += [resize_uint8(np.asarray(ep[cam][::stride]), size, crop), target]
                index += [rows, rows]
                targets.append(target)
                self.camera += [cam] * (2 * len(target))
        self.inputs = torch.cat(inputs) if inputs else torch.zeros(0, 3, size, size, dtype=torch.uint8)
        self.targets = torch.cat(targets) if targets else torch.zeros(0, 3, size, size, dtype=torch.uint8)
        self.target_index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.target_index[i]


def camera_indices(camera: Sequence[str], weights: dict[str, int]) -> list[int]:
    """Item indices of a set whose item i is from camera `camera[i]`, each repeated its camera's
    weight (default 1) times: an epoch draws a weighted camera's images that many times more."""
    return [i for i, cam in enumerate(camera) for _ in range(weights.get(cam, 1))]


# -- latent windows --------------------------------------------------------------------------


@dataclass
class LatentSetup:
    roots: list[Path]
    tokenizer: Tokenizer
    cfg: Any                    # PolicyConfig
    train: LatentDataset
    val: LatentDataset
    val_keys: list[str]


def latent_setup(args: argparse.Namespace, info: Dist, tok: Tokenizer, cfg_from_ckpt: dict | None,
                  require_actions: bool, label_fraction: float = 1.0) -> LatentSetup:
    """Cache latents (rank 0), build the PolicyConfig and the train/val window datasets."""
    from avdp_ros.model.config import PolicyConfig
    from avdp_ros.train.augment import AUGMENT_PRESETS

    roots, cameras = check_roots(args.data)
    aug = AUGMENT_PRESETS[getattr(args, "augment", "none")]

    def cached(r: Path, progress: bool) -> tuple[Path, ...]:
        c = cache_latents(r, tok, progress=progress)
        return (r, c, cache_views(r, tok, c, aug, args.views, args.seed, progress=progress)) if aug.enabled else (r, c)

    train_caches = []
    for r in roots:
        if info.is_main:
            train_caches.append(cached(r, not args.no_progress))
        info.barrier()
        if not info.is_main:
            train_caches.append(cached(r, False))  # present now: no encoding
    caches = [c[:2] for c in train_caches]
    cfg = PolicyConfig.from_dict(cfg_from_ckpt) if cfg_from_ckpt else policy_config(args, tok, cameras, roots)
    unknown = sorted(set(build_vocabulary(roots)) - set(cfg.instructions))
    if unknown:  # they would all read as <unk>: the model could not tell the new tasks apart
        raise SystemExit(f"the data has instructions the checkpoint's vocabulary does not know: {unknown} "
                         f"(it knows {list(cfg.instructions[1:])}); train a new model on all the data "
                         "to add tasks")
    if tuple(cfg.latent_shape) != tuple(tok.config.latent_shape):
        raise SystemExit(f"tokenizer latents {tok.config.latent_shape} do not match the config's "
                         f"latent_shape {cfg.latent_shape}")
    train_keys, val_keys = split_episodes(roots, args)
    if require_actions:
        # Failed demonstrations (recorded success false) teach the failure; leave them to the
        # video model unless asked. Unknown success (teleop without a verdict) counts as a demo.
        refs = [ref for ref in list_episodes(roots) if ref.has_actions and ref.key in set(train_keys)]
        labelled = [ref.key for ref in refs if ref.success is not False or getattr(args, "include_failed", False)]
        if len(labelled) < len(refs) and info.is_main:
            print(f"{len(refs) - len(labelled)} failed demonstrations left out of action training "
                  "(--include-failed keeps them)", file=sys.stderr)
        train_keys = label_subset(labelled, label_fraction, args.seed)
    kw = dict(context_frames=cfg.context_frames, future_frames=cfg.future_frames, horizon=cfg.horizon,
              vocab=cfg.instructions, cameras=cfg.cameras, require_actions=require_actions)
    train = LatentDataset(train_caches, episodes=train_keys, **kw)  # augmented views (if any): training only
    if len(train) == 0:  # before any statistics are fitted on nothing
        raise ValueError(f"training set is empty: {len(train_keys)} training episodes"
                         f"{' with action labels' if require_actions else ''} in {[str(r) for r in roots]}; "
                         "check --data, --label-fraction, --val-fraction (and --include-failed)")
    val = LatentDataset(caches, episodes=val_keys, **kw)
    if info.is_main:
        n_lab = sum(a is not None for a in train.actions)
        views = f" ({train.views} views each)" if train.views > 1 else ""
        print(f"{len(train.refs)} train episodes ({n_lab} with actions), {len(val.refs)} val episodes; "
              f"{len(train)} train windows{views}", file=sys.stderr)
    return LatentSetup(roots, tok, cfg, train, val, val_keys)


def val_indices(ds: LatentDataset, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(ds), generator=gen)[:VAL_WINDOWS].tolist()


def stack_windows(ds: LatentDataset, idx: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in idx]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}


def future_images(s: LatentSetup, idx: Sequence[int], k: int) -> torch.Tensor:
    """Real frames t+1..t+k of validation windows as (N, k, cams, 3, S, S) float in [0, 1]."""
    S = s.tokenizer.config.image_size
    out = []
    for i in idx:
        e, t, _ = s.val.index[i]
        ref = s.val.refs[e]
        ep = EpisodeDataset(ref.root, validate=False)[ref.name]
        frames = np.clip(np.arange(t + 1, t + k + 1), 0, ref.length - 1)
        cams = [resize_uint8(np.asarray(ep[c][frames]), S, s.tokenizer.config.crops.get(c))
                for c in s.cfg.cameras]  # each (k, 3, S, S)
        out.append(torch.stack(cams, dim=1).float() / 255.0)  # (k, cams, 3, S, S)
    return torch.stack(out)


def decode_frames(tok: Tokenizer, latents: torch.Tensor) -> torch.Tensor:
    """(N, k, cams, C, h, w) -> (N, k, cams, 3, S, S)."""
    flat = latents.flatten(0, 2)
    img = torch.cat([tok.decode(flat[i:i + 256]) for i in range(0, len(flat), 256)])
    return img.view(*latents.shape[:3], *img.shape[1:])


class WithFeatures(torch.utils.data.Dataset):
    """Windows of a LatentDataset plus `video_features` (Fc+K, D) of their true frames.

    The video model is frozen while the IDM trains and its features of clean frames are
    deterministic, so they are computed once (`video_feature_table`) instead of every step, which
    would cost a video-model forward pass per batch (most of an IDM step on a CPU).
    """

    def __init__(self, windows: LatentDataset, features: torch.Tensor) -> None:
        if len(features) != len(windows):
            raise ValueError(f"{len(features)} feature rows for {len(windows)} windows")
        self.windows, self.features = windows, features

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return dict(self.windows[i], video_features=self.features[i])


class WithTokens(torch.utils.data.Dataset):
    """Windows of a LatentDataset plus `video_tokens` (L, D): one of `draws` cached VideoModel.tokens
    of the window (clean context, pure-noise future slots), a different draw each time it is read.

    Why: a two-stage VPP head reads a frozen video model, so its tokens are a function of the window
    and the slots' noise alone. A fresh pass every step is most of a step on a CPU (66 against 550
    samples/s on the 100-episode scarce set, batch 64, one thread); a few noise draws per window,
    computed once, keep the head seeing varied noise at a fraction of the cost. The draw is taken
    from torch's global generator, which the engine seeds, so a run stays reproducible by seed.
    """

    def __init__(self, windows: LatentDataset, tokens: torch.Tensor) -> None:
        if tokens.ndim != 4 or len(tokens) != len(windows):
            raise ValueError(f"token table {tuple(tokens.shape)}: expected ({len(windows)}, draws, L, D)")
        self.windows, self.tokens = windows, tokens

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d = int(torch.randint(self.tokens.shape[1], ()))
        return dict(self.windows[i], video_tokens=self.tokens[i, d].float())


@torch.no_grad()
def per_window_table(windows: LatentDataset, row_of, desc: str, device: torch.device, batch_size: int = 128,
                     progress: bool = True) -> torch.Tensor:
    """`row_of(batch)` of every window, in batches, concatenated on CPU: what a frozen video model
    gives each window, computed once before training."""
    from tqdm import tqdm

    rows = []
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, disable=not progress, unit="batch"):
        rows.append(row_of(stack_windows(windows, range(start, min(start + batch_size, len(windows))), device)).cpu())
    return torch.cat(rows) if rows else torch.zeros(0)


def video_token_table(windows: LatentDataset, tokens_of, draws: int, device: torch.device, seed: int,
                      batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """`draws` token sets (N, draws, L, D) per window, float16: `tokens_of(batch, noise)` with a
    seeded pure-noise draw of the future slots for each."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return per_window_table(windows, lambda b: torch.stack(
        [tokens_of(b, torch.randn(b["future"].shape, generator=gen).to(device)).half() for _ in range(draws)], dim=1),
        "video tokens", device, batch_size, progress)


def video_feature_table(windows: LatentDataset, video, video_norm, context_frames: int, device: torch.device,
                        batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """Video-model features (N, Fc+K, D) of every window's context + true future frames (on CPU)."""
    def features(b: dict[str, torch.Tensor]) -> torch.Tensor:
        seq = torch.cat([b["context"], b["future"]], dim=1)  # (B, Fc+K, cams, C, h, w)
        return video.features(seq, b["instr"], video_norm.normalize(b["states"][:, :context_frames]))

    return per_window_table(windows, features, "video features", device, batch_size, progress)


def early_window_indices(windows: LatentDataset, early_frames: int, weight: int,
                         root_weights: dict[Path, int] | None = None) -> list[int]:
    """Window indices, those whose last observed frame is < `early_frames` repeated `weight` times,
    and every window of a dataset root in `root_weights` that many times more.

    Why: at an episode's start every pose is the same, so the first chunk must come from the
    images alone (where the cube and the goal are), while later windows can lean on the state
    and the visible motion. Those start windows are a few percent of the data and the ones a closed-loop
    rollout cannot recover from, so they get more of the gradient. Root weights keep a small
    dataset's share of the draws when large ones join it (true labels among pseudo-labels).
    """
    rw = root_weights or {}

    def times(e: int, t: int) -> int:
        return (weight if t < early_frames else 1) * (rw.get(windows.refs[e].root, 1) if rw else 1)

    return [i for i, (e, t, _) in enumerate(windows.index) for _ in range(times(e, t))]
