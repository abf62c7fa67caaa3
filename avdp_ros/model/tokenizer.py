"""Image tokenizer (diffusers `AutoencoderKL`) and the latent cache that training reads.

Frames are encoded once (`cache_latents`) so the video model and the IDM never re-encode
(MAR's `main_cache.py`). The cache lives under `<dataset>/latents/<tokenizer hash>/`, so a new
tokenizer gets a new cache and a stale one is never read by mistake.

`latent_scale` (1 / std of the unscaled posterior means on the training set) is computed once
after training by `calibrate_latent_scale`, stored in `TokenizerConfig` (hence in the checkpoint)
and applied only inside `Tokenizer.encode` / `Tokenizer.decode`. No other module multiplies by it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.images import check_crop, crop_box
from avdp_ros.model.checkpoint import load_checkpoint, load_into, save_checkpoint

CHECKPOINT_KIND = "tokenizer"
CACHE_FORMAT = "avdp-latents"
CACHE_VERSION = 1
UNK = "<unk>"
log = logging.getLogger(__name__)
ACTION_DIM = 10  # x y z + rot6d (6) + gripper width; also the proprio state layout


@dataclass
class TokenizerConfig:
    image_size: int = 64  # square input side S; frames are resized to (S, S) before encoding
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)  # one block per level; 2x down between levels
    layers_per_block: int = 1
    norm_num_groups: int = 8  # must divide every entry of block_out_channels
    latent_scale: float = 1.0  # 1 / std of posterior means on the training set (calibrate_latent_scale)
    kl_weight: float = 1e-6  # KL term weight; small: we want a near-deterministic autoencoder
    recon_loss: str = "l1"  # "l1" or "mse"
    mid_attention: bool = True  # self-attention in the bottleneck (cheap at 8x8)
    # camera name -> (top, left, height, width) fractions of the frame cut out before the resize: a
    # region of interest, so the workspace gets the tokenizer's pixels instead of walls and sky
    # (a wide scene camera shows a 4 cm cube as 2-3 px at 64x64). Cameras not named: whole frame.
    crops: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if not self.block_out_channels:
            raise ValueError("TokenizerConfig.block_out_channels: expected at least one level")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"TokenizerConfig.norm_num_groups={self.norm_num_groups} must divide every "
                             f"block_out_channels entry; {bad} do not")
        if self.image_size % self.downsample:
            raise ValueError(f"TokenizerConfig.image_size={self.image_size}: expected a multiple of the "
                             f"downsampling factor {self.downsample}")
        if self.recon_loss not in ("l1", "mse"):
            raise ValueError(f"TokenizerConfig.recon_loss={self.recon_loss!r}: expected 'l1' or 'mse'")
        if not self.latent_scale > 0:
            raise ValueError(f"TokenizerConfig.latent_scale={self.latent_scale}: expected > 0")
        if not isinstance(self.crops, dict):
            raise ValueError(f"TokenizerConfig.crops={self.crops!r}: expected {{camera: [top, left, height, width]}}")
        self.crops = {str(cam): check_crop(box, f"TokenizerConfig.crops[{cam!r}]") for cam, box in self.crops.items()}

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one encoded image."""
        s = self.image_size // self.downsample
        return (self.latent_channels, s, s)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        d["crops"] = {cam: list(box) for cam, box in self.crops.items()}
        if not d["crops"]:
            del d["crops"]  # so tokenizers from before crops keep their fingerprint and latent caches
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TokenizerConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    # CPU tests: 16x16 -> 4x4x4 latents, a few thousand parameters
    "tiny": TokenizerConfig(image_size=16, block_out_channels=(8, 16, 16), norm_num_groups=4),
    # 64x64 -> 8x8x4 latents; small widths so CPU training takes minutes
    "base": TokenizerConfig(image_size=64, block_out_channels=(16, 32, 64, 64), norm_num_groups=8),
}


def to_float_images(images: torch.Tensor | np.ndarray, size: int, crop=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> float (B, 3, size, size) in [0, 1].

    The one crop (`crop_box` of the optional (top, left, height, width) fractions) and resize
    (antialiased bilinear) used for training, caching and inference, so the tokenizer never sees
    two different downsamplers.
    """
    x = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images  # copy: mmap is read-only
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"images: expected (B, H, W, 3) uint8 or (B, 3, H, W) float, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"uint8 images: expected (B, H, W, 3) RGB, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    elif x.is_floating_point():
        if x.shape[1] != 3:
            raise ValueError(f"float images: expected (B, 3, H, W) in [0, 1], got shape {tuple(x.shape)}")
        x = x.float()
    else:
        raise ValueError(f"images: dtype {x.dtype}, expected uint8 (B,H,W,3) or float (B,3,H,W)")
    if crop is not None:
        y0, y1, x0, x1 = crop_box(x.shape[-2], x.shape[-1], crop)
        x = x[..., y0:y1, x0:x1]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0)


def resize_uint8(images: np.ndarray, size: int, crop=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> uint8 (B, 3, size, size): compact storage of training images."""
    x = to_float_images(torch.from_numpy(np.array(images)), size, crop)  # copy: mmap is read-only
    return (x * 255.0).round().to(torch.uint8)


class Tokenizer(nn.Module):
    """AutoencoderKL over one camera image; latents = posterior mean * config.latent_scale."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        from diffusers import AutoencoderKL  # heavy import: only when a tokenizer is built

        self.config = config
        n = len(config.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
            sample_size=config.image_size, mid_block_add_attention=config.mid_attention,
            scaling_factor=1.0,  # diffusers' own factor is unused; ours is config.latent_scale
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prepare(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return to_float_images(images, self.config.image_size).to(self.device) * 2.0 - 1.0  # (B,3,S,S) in [-1,1]

    def camera_images(self, images: torch.Tensor | np.ndarray, camera: str) -> torch.Tensor:
        """Frames of one camera -> float (B, 3, S, S) in [0, 1], cropped as `config.crops` says."""
        return to_float_images(images, self.config.image_size, self.config.crops.get(camera))

    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> scaled latents (B, C, h, w) float32."""
        post = self.vae.encode(self._prepare(images)).latent_dist
        return post.mean * self.config.latent_scale  # (B, C, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, S, S) float in [0, 1]."""
        x = self.vae.decode(latents.to(self.device, torch.float32) / self.config.latent_scale).sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)  # (B, 3, S, S)

    def reconstruct(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.decode(self.encode(images))

    def loss(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction (L1 or MSE, on [-1, 1] images) + kl_weight * KL (mean per latent element)."""
        x = self._prepare(images)  # (B, 3, S, S)
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample  # (B, 3, S, S)
        if self.config.recon_loss == "l1":
            rec_loss = (rec - x).abs().mean()
        else:
            rec_loss = F.mse_loss(rec, x)
        kl = post.kl().mean() / float(np.prod(self.config.latent_shape))
        loss = rec_loss + self.config.kl_weight * kl
        return loss, {"loss": loss.item(), "recon": rec_loss.item(), "kl": kl.item()}

    # -- identity and persistence ------------------------------------------------------------

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the config and every weight; names the latent cache of this tokenizer."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for key, value in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None,
             data_manifest: str | os.PathLike | None = None) -> Path:
        extra = dict(extra or {}, fingerprint=self.fingerprint())
        return save_checkpoint(path, CHECKPOINT_KIND, {"tokenizer": self}, self.config.to_dict(), extra,
                               data_manifest)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Tokenizer:
        states, meta = load_checkpoint(path, expected_kind=CHECKPOINT_KIND)
        tok = cls(TokenizerConfig.from_dict(meta["config"]))
        load_into(tok, states["tokenizer"], f"tokenizer checkpoint {path}")
        return tok.to(map_location).eval()


@torch.no_grad()
def calibrate_latent_scale(tokenizer: Tokenizer, images: Iterable[torch.Tensor]) -> float:
    """Set `tokenizer.config.latent_scale` to 1 / std of unscaled latents over `images` batches.

    Call once after training, before saving the final checkpoint (that stores it).
    """
    was = tokenizer.training
    tokenizer.eval()
    tokenizer.config.latent_scale = 1.0
    total, total_sq, n = 0.0, 0.0, 0
    for batch in images:
        z = tokenizer.encode(batch).double()  # unscaled: latent_scale is 1 here
        total += z.sum().item()
        total_sq += (z * z).sum().item()
        n += z.numel()
    if n == 0:
        raise ValueError("calibrate_latent_scale: no images given")
    var = max(total_sq / n - (total / n) ** 2, 1e-12)
    tokenizer.config.latent_scale = float(1.0 / np.sqrt(var))
    tokenizer.train(was)
    return tokenizer.config.latent_scale


# -- latent cache ----------------------------------------------------------------------------


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
        from avdp_ros.model.checkpoint import file_sha256

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


def build_vocabulary(dataset_roots: Sequence[str | os.PathLike]) -> list[str]:
    """`<unk>` followed by the sorted instruction strings found in the datasets' manifests."""
    found = set()
    for root in dataset_roots:
        m = json.loads((Path(root) / "manifest.json").read_text())
        found.update(e.get("instruction") or "" for e in m.get("episodes", []))
    found.discard("")
    return [UNK, *sorted(found)]


def instruction_index(vocab: Sequence[str], instruction: str | None) -> int:
    """Index of `instruction` in `vocab`; unknown or empty -> 0 (`<unk>`)."""
    try:
        return list(vocab).index(instruction) if instruction else 0
    except ValueError:
        return 0


def pose_to_state10(ee_pose: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """(N, 7) pose x y z qx qy qz qw + (N,) width -> (N, 10) x y z rot6d width float32."""
    from avdp_ros.model.rotation import quat_to_rot6d

    pose = torch.from_numpy(np.array(ee_pose, dtype=np.float32))  # copy: mmap is read-only
    rot6d = quat_to_rot6d(pose[:, 3:7])  # (N, 6)
    width = torch.from_numpy(np.array(gripper, dtype=np.float32)).reshape(-1, 1)
    return torch.cat([pose[:, :3], rot6d, width], dim=1).numpy().astype(np.float32)


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

    Padding: before the episode start the first frame (and its state) is repeated; past the end
    the last frame / state / action row is repeated. Actions are taken at the observation rate:
    with `action_ratio` r the row k*r (the target being tracked at observation step k) is used
    and the r-1 rows in between are dropped.

    Args:
        caches: (dataset_root, cache_dir) pairs, cache_dir as returned by `cache_latents`.
        episodes: keys (`EpisodeRef.key`) to keep; None keeps all.
        require_actions: keep only action-labelled episodes (IDM / baseline training).
    """

    def __init__(self, caches: Sequence[tuple[str | os.PathLike, str | os.PathLike]], context_frames: int,
                 future_frames: int, horizon: int, vocab: Sequence[str], cameras: Sequence[str] | None = None,
                 episodes: Iterable[str] | None = None, require_actions: bool = False) -> None:
        if context_frames < 1 or future_frames < 0 or horizon < 1:
            raise ValueError(f"LatentDataset: context_frames={context_frames} (>= 1), future_frames="
                             f"{future_frames} (>= 0), horizon={horizon} (>= 1)")
        self.Fc, self.K, self.H = context_frames, future_frames, horizon
        self.vocab = list(vocab)
        keep = set(episodes) if episodes is not None else None
        self.latents: list[np.ndarray] = []  # per episode (T, cams, C, h, w) float16
        self.states: list[np.ndarray] = []  # per episode (T, 10)
        self.actions: list[np.ndarray | None] = []  # per episode (T, 10) at obs rate, or None
        self.chunks: list[np.ndarray | None] = []  # per episode (T, H, 10) labelled chunks, or None
        self.instr: list[int] = []
        self.refs: list[EpisodeRef] = []
        self.latent_shape: tuple[int, int, int] | None = None
        self.cameras: list[str] | None = list(cameras) if cameras is not None else None
        for root, cache in caches:
            cache = Path(cache)
            m = json.loads((cache / "manifest.json").read_text())
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
                lat = np.stack([np.load(cache / ref.name / f"{c}.npy") for c in cams], axis=1)  # (T,cams,C,h,w)
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
                    c = pose_to_state10(c[:, :7], c[:, 7]).reshape(len(lat), self.H, ACTION_DIM)
                self.chunks.append(c)
                self.instr.append(instruction_index(self.vocab, ref.instruction))
                self.refs.append(ref)
        self.index = [(e, t) for e, lat in enumerate(self.latents) for t in range(max(len(lat) - 1, 1))]

    def __len__(self) -> int:
        return len(self.index)

    def action_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """Every window's action chunk (N, H, 10) and the state it starts from (N, 10), action-labelled
        episodes only: what an action normaliser is fitted on (relative chunks depend on the state)."""
        chunks, starts = [np.zeros((0, self.H, ACTION_DIM), np.float32)], [np.zeros((0, ACTION_DIM), np.float32)]
        for e, t in self.index:
            if self.actions[e] is not None:
                chunks.append(self._chunk(e, t)[None])
                starts.append(self.states[e][t][None])
        return np.concatenate(chunks), np.concatenate(starts)

    def _chunk(self, e: int, t: int) -> np.ndarray:
        """(H, 10) action labels of window (e, t): the stored chunk, else rows t..t+H-1 (padded)."""
        if self.chunks[e] is not None:
            return self.chunks[e][t]
        return self.actions[e][np.clip(np.arange(t, t + self.H), 0, len(self.actions[e]) - 1)]

    def state_rows(self) -> np.ndarray:
        return np.concatenate(self.states) if self.states else np.zeros((0, ACTION_DIM), np.float32)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, t = self.index[i]
        lat, states, actions = self.latents[e], self.states[e], self.actions[e]
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
        }
