"""The latent cache and the training windows read from it (video model, IDM, baseline).

Frames are encoded once (`cache_latents`) so the video model and the action heads never
re-encode (MAR's `main_cache.py`). The cache lives under `<dataset>/latents/<tokenizer hash>/`,
so a new tokenizer gets a new cache and a stale one is never read by mistake. `LatentDataset`
serves windows of cached latents, states and action chunks; `list_episodes` and
`build_vocabulary` read the converted datasets' manifests.

Augmented views (`cache_views`): a cached latent cannot be colour-jittered after the fact, so each
episode is also encoded V-1 more times, each time through its own seeded augmentation
(train/augment.py, one draw per episode view: one light, one bumped tripod for all its frames),
under `<cache>/views/<hash of augmentation, V, seed>/`. `LatentDataset` then serves every window
once per view; the training sampler's seed picks which, so a run is reproducible by its seed.
Why not encode on the fly: it costs a tokenizer forward pass per window frame and step, several
times the action head's own step on a CPU (docs/appearance.md has the measured ratio).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.data.files import file_sha256
from avdp_ros.model.config import ACTION_DIM, STATE_DIM, UNK, instruction_index
from avdp_ros.model.rotation import pose_to_state10

if TYPE_CHECKING:
    from avdp_ros.model.tokenizer import Tokenizer
    from avdp_ros.train.augment import AugmentConfig

CACHE_FORMAT = "avdp-latents"
CACHE_VERSION = 1
log = logging.getLogger(__name__)


def cache_dir_for(dataset_root: str | os.PathLike, tokenizer_hash: str) -> Path:
    return Path(dataset_root) / "latents" / tokenizer_hash[:16]


def _atomic_write_npy(path: Path, array: np.ndarray) -> None:
    # unique temp name: two trainers may cache the same dataset at once (same bytes, last wins)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


@torch.no_grad()
def cache_latents(dataset_root: str | os.PathLike, tokenizer: Tokenizer, out_dir: str | os.PathLike | None = None,
                  batch_size: int = 64, progress: bool = True) -> Path:
    """Encode every frame of every camera of a converted dataset once; return the cache directory.

    Layout: `<out_dir>/manifest.json` and `<out_dir>/<episode>/<camera>.npy` (T, C, h, w) float16.
    `out_dir` defaults to `<dataset>/latents/<tokenizer hash[:16]>/`. Episodes whose files exist
    with the expected shape are skipped, so a second call encodes nothing and an interrupted one
    resumes; the manifest (written last) records the tokenizer hash and config, latent shape,
    cameras, episode lengths and the dataset manifest hash.
    """
    from tqdm import tqdm

    ds = EpisodeDataset(dataset_root)
    fp = tokenizer.fingerprint()
    out = Path(out_dir) if out_dir is not None else cache_dir_for(ds.root, fp)
    manifest_path = out / "manifest.json"
    C, h, w = tokenizer.config.latent_shape
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if m.get("tokenizer_hash") != fp:
            raise ValueError(f"latent cache {out}: made by tokenizer {m.get('tokenizer_hash', '?')[:16]}, "
                             f"not {fp[:16]}; pass another out_dir")
    todo = []
    for i, entry in enumerate(ds.episodes):
        T = int(entry["length"])
        for cam in ds.cameras:
            p = out / entry["name"] / f"{cam}.npy"
            if not (p.exists() and np.load(p, mmap_mode="r").shape == (T, C, h, w)):
                todo.append((i, cam))
    if todo:
        was = tokenizer.training
        tokenizer.eval()
        n_frames = sum(int(ds.episodes[i]["length"]) for i, _ in todo)
        bar = tqdm(total=n_frames, desc=f"cache latents {ds.root.name}", unit="img", disable=not progress)
        for i, cam in todo:
            frames = ds[i][cam]  # (T, H, W, 3) uint8, memory-mapped
            chunks = []
            for s in range(0, len(frames), batch_size):
                batch = tokenizer.camera_images(np.asarray(frames[s:s + batch_size]), cam)
                chunks.append(tokenizer.encode(batch).cpu())  # (b, C, h, w)
                bar.update(min(batch_size, len(frames) - s))
            d = out / ds.episodes[i]["name"]
            d.mkdir(parents=True, exist_ok=True)
            _atomic_write_npy(d / f"{cam}.npy", torch.cat(chunks).to(torch.float16).numpy())
        bar.close()
        tokenizer.train(was)
    if todo or not manifest_path.exists():
        manifest = {
            "format": CACHE_FORMAT, "version": CACHE_VERSION,
            "tokenizer_hash": fp, "tokenizer_config": tokenizer.config.to_dict(),
            "latent_shape": [C, h, w], "dtype": "float16", "cameras": list(ds.cameras),
            "dataset_root": str(ds.root.resolve()),
            "dataset_manifest_sha256": file_sha256(ds.root / "manifest.json"),
            "episodes": {e["name"]: int(e["length"]) for e in ds.episodes},
        }
        tmp = manifest_path.with_name(f"manifest.json.{os.getpid()}.tmp")
        out.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, manifest_path)
    return out


def views_key(augment: AugmentConfig, views: int, seed: int) -> str:
    blob = json.dumps({"augment": augment.to_dict(), "views": int(views), "seed": int(seed)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def cache_views(dataset_root: str | os.PathLike, tokenizer: Tokenizer, cache: str | os.PathLike,
                augment: AugmentConfig, views: int, seed: int = 0, batch_size: int = 64,
                progress: bool = True) -> Path:
    """Encode V-1 augmented copies of every episode next to its clean latents (module docstring);
    return the views directory `<cache>/views/<key>/`, holding `<episode>/<camera>.npy`
    (V-1, T, C, h, w) float16 and a manifest. View v of an episode is drawn from a generator seeded
    by (`seed`, episode name, v), the same for every camera; existing files are kept (resumable)."""
    from tqdm import tqdm

    from avdp_ros.train.augment import augment as apply_augment

    if views < 2 or not augment.enabled:
        raise ValueError(f"cache_views: views = {views} with augmentation {augment}: expected views >= 2 and "
                         "some augmentation (view 0 is the clean cache)")
    ds = EpisodeDataset(dataset_root)
    cache = Path(cache)
    out = cache / "views" / views_key(augment, views, seed)
    C, h, w = tokenizer.config.latent_shape
    todo = [e for e in ds.episodes if not all(
        (out / e["name"] / f"{cam}.npy").exists()
        and np.load(out / e["name"] / f"{cam}.npy", mmap_mode="r").shape == (views - 1, int(e["length"]), C, h, w)
        for cam in ds.cameras)]
    if todo:
        was = tokenizer.training
        tokenizer.eval()
        n_frames = sum(int(e["length"]) for e in todo) * (views - 1) * len(ds.cameras)
        bar = tqdm(total=n_frames, desc=f"cache views {ds.root.name}", unit="img", disable=not progress)
        for entry in todo:
            ep = ds[entry["name"]]
            per_cam: dict[str, list[torch.Tensor]] = {cam: [] for cam in ds.cameras}
            for v in range(1, views):
                for cam in ds.cameras:
                    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{entry['name']}/{v}".encode()))
                    frames = tokenizer.camera_images(np.asarray(ep[cam]), cam)  # (T, 3, S, S)
                    frames = apply_augment(frames, augment, gen, shared=True)
                    per_cam[cam].append(torch.cat([tokenizer.encode(frames[s:s + batch_size]).cpu()
                                                   for s in range(0, len(frames), batch_size)]))
                    bar.update(len(frames))
            d = out / entry["name"]
            d.mkdir(parents=True, exist_ok=True)
            for cam, chunks in per_cam.items():
                _atomic_write_npy(d / f"{cam}.npy", torch.stack(chunks).to(torch.float16).numpy())
        bar.close()
        tokenizer.train(was)
    manifest = {"format": CACHE_FORMAT + "-views", "version": CACHE_VERSION, "augment": augment.to_dict(),
                "views": int(views), "seed": int(seed), "tokenizer_hash": tokenizer.fingerprint(),
                "episodes": {e["name"]: int(e["length"]) for e in ds.episodes}}
    if todo or not (out / "manifest.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f"manifest.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out / "manifest.json")
    return out


def build_vocabulary(dataset_roots: Sequence[str | os.PathLike]) -> list[str]:
    """`<unk>` followed by the sorted instruction strings found in the datasets' manifests."""
    found = set()
    for root in dataset_roots:
        m = json.loads((Path(root) / "manifest.json").read_text())
        found.update(e.get("instruction") or "" for e in m.get("episodes", []))
    found.discard("")
    return [UNK, *sorted(found)]


@dataclass
class EpisodeRef:
    """One episode of one dataset; `key` ("<dataset dir name>/<episode>") names it in splits."""

    root: Path
    name: str
    length: int
    has_actions: bool
    instruction: str
    success: bool | None = None  # as recorded (None: unknown, e.g. a teleop bag without a verdict)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = f"{self.root.name}/{self.name}"


def list_episodes(dataset_roots: Sequence[str | os.PathLike]) -> list[EpisodeRef]:
    refs = []
    for root in dataset_roots:
        root = Path(root)
        m = json.loads((root / "manifest.json").read_text())
        for e in m.get("episodes", []):
            refs.append(EpisodeRef(root, e["name"], int(e["length"]), bool(e["has_actions"]),
                                   e.get("instruction") or "", e.get("success")))
    return refs


class LatentDataset(Dataset):
    """Training windows over cached latents of one or more datasets (all loaded into memory).

    Window `(episode, t)` for every step t = 0 .. T-2 (at least one real future frame), where t is
    the last context frame. `ds[i]` -> dict of tensors:

    - `context` (Fc, cams, C, h, w) f32: latents of frames t-Fc+1 .. t
    - `future` (K, cams, C, h, w) f32: latents of frames t+1 .. t+K
    - `states` (Fc+K, 10) f32: ee pos + rot6d + gripper width of every window frame
    - `state` (10,) f32: the state at t (= `states[Fc-1]`)
    - `actions` (H, 10) f32: targets due at t, t+1/obs_hz, ..., t+(H-1)/obs_hz (zeros if action-free);
      where an episode stores the labeller's own chunk per observation (`action_chunk`, DAgger
      episodes of avdp-dagger) and it covers H rows, that chunk (see `sim.dagger.ExpertLabeller`)
    - `instr` () int64: index into `vocab`; `has_actions` () bool
    - `future_valid` () bool: the future frames show what `actions` do. False where the labels are
      a relabeller's chunks (DAgger): the frames follow the learner's actions, not the labels

    With augmented views (a cache given as (root, cache_dir, views_dir), see `cache_views`) every
    window is served once per view, view 0 being the clean latents: `index` holds (episode, t, view).

    Padding: before the episode start the first frame (and its state) is repeated; past the end
    the last frame / state / action row is repeated. Actions are taken at the observation rate:
    with `action_ratio` r the row k*r (the target being tracked at observation step k) is used
    and the r-1 rows in between are dropped.

    Args:
        caches: (dataset_root, cache_dir) pairs, cache_dir as returned by `cache_latents`, or
            (dataset_root, cache_dir, views_dir) triples (`cache_views`); all or none with views.
        episodes: keys (`EpisodeRef.key`) to keep; None keeps all.
        require_actions: keep only action-labelled episodes (IDM / baseline training).
    """

    def __init__(self, caches: Sequence[tuple[str | os.PathLike, ...]], context_frames: int,
                 future_frames: int, horizon: int, vocab: Sequence[str], cameras: Sequence[str] | None = None,
                 episodes: Iterable[str] | None = None, require_actions: bool = False) -> None:
        if context_frames < 1 or future_frames < 0 or horizon < 1:
            raise ValueError(f"LatentDataset: context_frames={context_frames} (>= 1), future_frames="
                             f"{future_frames} (>= 0), horizon={horizon} (>= 1)")
        self.Fc, self.K, self.H = context_frames, future_frames, horizon
        self.vocab = list(vocab)
        keep = set(episodes) if episodes is not None else None
        self.latents: list[np.ndarray] = []  # per episode (V, T, cams, C, h, w) float16, V views (1 = clean only)
        self.states: list[np.ndarray] = []  # per episode (T, 10)
        self.actions: list[np.ndarray | None] = []  # per episode (T, 10) at obs rate, or None
        self.chunks: list[np.ndarray | None] = []  # per episode (T, H, 10) labelled chunks, or None
        self.instr: list[int] = []
        self.refs: list[EpisodeRef] = []
        self.latent_shape: tuple[int, int, int] | None = None
        self.cameras: list[str] | None = list(cameras) if cameras is not None else None
        n_views = {len(c) for c in caches}
        if len(n_views) > 1:
            raise ValueError("LatentDataset: some caches come with augmented views and some without")
        for root, cache, *views_dir in caches:
            cache = Path(cache)
            m = json.loads((cache / "manifest.json").read_text())
            vm = json.loads((Path(views_dir[0]) / "manifest.json").read_text()) if views_dir else None
            cams = self.cameras or list(m["cameras"])
            missing = [c for c in cams if c not in m["cameras"]]
            if missing:
                raise ValueError(f"latent cache {cache}: has cameras {m['cameras']}, expected {cams}")
            self.cameras = cams
            shape = tuple(m["latent_shape"])
            if self.latent_shape is not None and shape != self.latent_shape:
                raise ValueError(f"latent cache {cache}: latent shape {shape}, others have {self.latent_shape}")
            self.latent_shape = shape
            ds = EpisodeDataset(root, validate=False)
            r = ds.action_ratio
            for ref in list_episodes([ds.root]):
                if (keep is not None and ref.key not in keep) or (require_actions and not ref.has_actions):
                    continue
                if ref.name not in m["episodes"]:
                    raise ValueError(f"latent cache {cache}: episode {ref.name} missing; run cache_latents again")
                ep = ds[ref.name]
                lat = np.stack([np.load(cache / ref.name / f"{c}.npy") for c in cams], axis=1)[None]  # (1,T,cams,..)
                if vm is not None:
                    if ref.name not in vm["episodes"]:
                        raise ValueError(f"augmented views {views_dir[0]}: episode {ref.name} missing; run "
                                         "cache_views again")
                    aug = np.stack([np.load(Path(views_dir[0]) / ref.name / f"{c}.npy") for c in cams], axis=2)
                    lat = np.concatenate([lat, aug])  # (V, T, cams, C, h, w)
                self.latents.append(lat)
                self.states.append(pose_to_state10(ep["ee_pose"], ep["gripper"]))
                if ref.has_actions:
                    a = np.asarray(ep["action"])[::r]  # (T, 8) at obs rate
                    self.actions.append(pose_to_state10(a[:, :7], a[:, 7]))
                else:
                    self.actions.append(None)
                c = ep.get("action_chunk")
                if c is not None and c.shape[1] < self.H:
                    log.warning("episode %s: stored chunks have %d rows, the model's horizon is %d: using "
                                "its per-frame labels instead", ref.key, c.shape[1], self.H)
                    c = None
                if c is not None:
                    c = np.asarray(c[:, :self.H]).reshape(-1, 8)
                    c = pose_to_state10(c[:, :7], c[:, 7]).reshape(lat.shape[1], self.H, ACTION_DIM)
                self.chunks.append(c)
                self.instr.append(instruction_index(self.vocab, ref.instruction))
                self.refs.append(ref)
        self.views = self.latents[0].shape[0] if self.latents else 1
        self.index = [(e, t, v) for e, lat in enumerate(self.latents) for v in range(lat.shape[0])
                      for t in range(max(lat.shape[1] - 1, 1))]

    def __len__(self) -> int:
        return len(self.index)

    def action_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """Every window's action chunk (N, H, 10) and the state it starts from (N, 10), action-labelled
        episodes only: what an action normaliser is fitted on (relative chunks depend on the state)."""
        chunks, starts = [np.zeros((0, self.H, ACTION_DIM), np.float32)], [np.zeros((0, STATE_DIM), np.float32)]
        for e, t, v in self.index:
            if self.actions[e] is not None and v == 0:  # every view has the same labels
                chunks.append(self._chunk(e, t)[None])
                starts.append(self.states[e][t][None])
        return np.concatenate(chunks), np.concatenate(starts)

    def _chunk(self, e: int, t: int) -> np.ndarray:
        """(H, 10) action labels of window (e, t): the stored chunk, else rows t..t+H-1 (padded)."""
        if self.chunks[e] is not None:
            return self.chunks[e][t]
        return self.actions[e][np.clip(np.arange(t, t + self.H), 0, len(self.actions[e]) - 1)]

    def state_rows(self) -> np.ndarray:
        return np.concatenate(self.states) if self.states else np.zeros((0, STATE_DIM), np.float32)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, t, v = self.index[i]
        lat, states, actions = self.latents[e][v], self.states[e], self.actions[e]
        T = len(lat)
        frames = np.clip(np.arange(t - self.Fc + 1, t + self.K + 1), 0, T - 1)  # (Fc+K,) padded indices
        window = torch.from_numpy(lat[frames].astype(np.float32))  # (Fc+K, cams, C, h, w)
        st = torch.from_numpy(states[frames])  # (Fc+K, 10)
        if actions is not None:
            act = torch.from_numpy(self._chunk(e, t))  # (H, 10)
        else:
            act = torch.zeros(self.H, ACTION_DIM)
        return {
            "context": window[:self.Fc], "future": window[self.Fc:], "states": st, "state": st[self.Fc - 1],
            "actions": act, "instr": torch.tensor(self.instr[e], dtype=torch.long),
            "has_actions": torch.tensor(actions is not None),
            "future_valid": torch.tensor(self.chunks[e] is None),
        }
