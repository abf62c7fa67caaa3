"""The episode dataset format (docs/dataset_format.md): writing episodes and manifests, reading them.

``avdp_ros.data.convert`` (bags) and ``avdp-dagger`` (in-process sim episodes) write through
``finish_episode`` / ``write_episode`` and ``write_manifest``; ``EpisodeDataset`` reads.

Arrays are memory-mapped (``np.load(mmap_mode="r")``): opening a dataset reads only the
manifest and the ``.npy`` headers, so training can index into many GB without loading them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from avdp_ros.data.files import file_sha256

FORMAT = "avdp-episodes"
FORMAT_VERSION = 1


def finish_episode(tmp: Path, out_dir: Path, entry: dict, extra: dict) -> dict:
    """Write ``meta.json`` (the manifest ``entry`` plus ``extra``) into the episode folder ``tmp``
    that already holds the arrays, hash every file into ``entry["files"]`` and move ``tmp`` to
    ``out_dir`` in one rename, so a crash never leaves a half-written episode. Returns ``entry``."""
    (tmp / "meta.json").write_text(
        json.dumps({**entry, **extra}, indent=2, sort_keys=True, default=str) + "\n", "utf8"
    )
    entry["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return entry


def write_episode(out_dir: str | os.PathLike, arrays: dict[str, np.ndarray], entry: dict, extra: dict,
                  linked: dict[str, Path] | None = None) -> dict:
    """Write an episode from in-memory arrays (``camera``/``wrist``/``ee_pose``/``gripper``/
    ``stamps``/``action``, dtypes as in docs/dataset_format.md) in the converter's format; for
    producers that are not bags (``avdp-dagger``'s in-process sim episodes). Returns its entry.

    ``linked``: name -> an existing ``.npy`` file to take as that array unchanged, hard-linked
    (copied where the file system cannot link). Why: a relabelled copy of a dataset
    (``avdp-pseudo-label``) keeps its frames, which are nearly all of its bytes. Our writers never
    rewrite a file in place (they write a new folder and rename it), so a link cannot change under
    either dataset; the manifest's hashes would catch it if something else did."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a)
        for name, src in (linked or {}).items():
            try:
                os.link(src, tmp / f"{name}.npy")
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(src, tmp / f"{name}.npy")
        return finish_episode(tmp, out_dir, dict(entry, name=out_dir.name), extra)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_output(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """An empty dataset folder (``episodes/`` created); a dataset already there is an error unless
    ``overwrite``, which removes its episodes and manifest (nothing else)."""
    out = Path(out_dir).expanduser()
    if (out / "manifest.json").exists() or (out / "episodes").exists():
        if not overwrite:
            raise FileExistsError(f"output {out} already holds a dataset; pass overwrite=True (--overwrite)")
        shutil.rmtree(out / "episodes", ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    return out


def write_manifest(out: Path, cfg, episodes: list[dict], failed: list[dict], source: str) -> None:
    """``out/manifest.json`` for ``episodes`` (entries from ``convert_bag`` / ``write_episode``),
    written atomically."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "obs_hz": cfg.obs_hz,
        "action_hz": cfg.action_hz,
        "action_ratio": cfg.action_ratio,
        "image_size": list(cfg.image_size),
        "cameras": dict(cfg.cameras),
        "topics": {k: v for k, v in asdict(cfg).items() if k.endswith("_topic")},
        "config": {k: v for k, v in asdict(cfg).items() if not k.endswith("_topic") and k != "cameras"},
        "source_dir": source,
        "created_unix": time.time(),
        "episodes": episodes,
        "failed": failed,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", "utf8")
    os.replace(tmp, out / "manifest.json")


class DatasetError(ValueError):
    """The dataset on disk does not match its manifest; the message names file and expectation."""


class EpisodeDataset:
    """Episodes of a converted dataset.

    ``ds[i]`` (or ``ds["name"]``) -> dict with memory-mapped ``camera``/``wrist`` (T, H, W, 3)
    uint8 (one key per camera in the manifest), ``ee_pose`` (T, 7) f32, ``gripper`` (T,) f32,
    ``stamps`` (T,) int64, ``action`` (T*r, 8) f32 or None (action-free episode), ``action_chunk``
    (T, Hc, 8) f32 or None (the labeller's own chunk per observation, DAgger episodes of
    ``avdp-dagger``) and ``meta``.

    Args:
        root: dataset directory (holds manifest.json).
        validate: check every episode's files, dtypes and shapes against the manifest now.
        verify_hashes: also check the sha256 of every file (reads everything; slow).
    """

    def __init__(
        self, root: str | os.PathLike, *, validate: bool = True, verify_hashes: bool = False
    ) -> None:
        self.root = Path(root).expanduser()
        path = self.root / "manifest.json"
        if not path.exists():
            raise DatasetError(f"{path}: missing; expected a dataset written by avdp-convert")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text("utf8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not valid JSON ({err})") from err
        if self.manifest.get("format") != FORMAT:
            raise DatasetError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"{path}: format_version {self.manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        self.episodes: list[dict[str, Any]] = list(self.manifest.get("episodes", []))
        self._index = {e["name"]: i for i, e in enumerate(self.episodes)}
        self.cameras: list[str] = list(self.manifest["cameras"])
        self.image_size: tuple[int, int] = tuple(self.manifest["image_size"])  # (H, W)
        self.action_ratio: int = int(self.manifest["action_ratio"])
        if validate or verify_hashes:
            for i in range(len(self)):
                self._check(i, verify_hashes)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("failed", []))

    def episode_dir(self, key: int | str) -> Path:
        return self.root / "episodes" / self.episodes[self._resolve(key)]["name"]

    def _resolve(self, key: int | str) -> int:
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"episode {key!r} not in {self.root / 'manifest.json'}")
            return self._index[key]
        n = len(self)
        if not -n <= key < n:
            raise IndexError(f"episode index {key} out of range for {n} episodes")
        return key % n

    def __getitem__(self, key: int | str) -> dict[str, Any]:
        i = self._resolve(key)
        entry = self.episodes[i]
        d = self.root / "episodes" / entry["name"]
        out: dict[str, Any] = {}
        for name in [*self.cameras, "ee_pose", "gripper", "stamps"]:
            out[name] = np.load(d / f"{name}.npy", mmap_mode="r")
        out["action"] = np.load(d / "action.npy", mmap_mode="r") if entry["has_actions"] else None
        out["action_chunk"] = (np.load(d / "action_chunk.npy", mmap_mode="r")
                               if entry.get("chunk_horizon") else None)
        out["meta"] = json.loads((d / "meta.json").read_text("utf8"))
        return out

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _check(self, i: int, verify_hashes: bool) -> None:
        entry = self.episodes[i]
        d = self.root / "episodes" / entry["name"]
        T = int(entry["length"])
        h, w = self.image_size
        expected = {name: (np.uint8, (T, h, w, 3)) for name in self.cameras}
        expected.update(ee_pose=(np.float32, (T, 7)), gripper=(np.float32, (T,)), stamps=(np.int64, (T,)))
        if entry["has_actions"]:
            expected["action"] = (np.float32, (T * self.action_ratio, 8))
        if entry.get("chunk_horizon"):
            expected["action_chunk"] = (np.float32, (T, int(entry["chunk_horizon"]), 8))
        for name, (dtype, shape) in expected.items():
            p = d / f"{name}.npy"
            if not p.exists():
                raise DatasetError(f"episode {entry['name']}: {p} missing")
            try:
                a = np.load(p, mmap_mode="r")
            except ValueError as err:
                raise DatasetError(f"episode {entry['name']}: {p} unreadable ({err})") from err
            if a.dtype != dtype or a.shape != shape:
                raise DatasetError(
                    f"episode {entry['name']}: {p.name} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}"
                )
        if not (d / "meta.json").exists():
            raise DatasetError(f"episode {entry['name']}: {d / 'meta.json'} missing")
        if verify_hashes:
            for fname, rec in entry.get("files", {}).items():
                h_ = file_sha256(d / fname)
                if h_ != rec["sha256"]:
                    raise DatasetError(
                        f"episode {entry['name']}: {fname} sha256 {h_[:12]}..., manifest says "
                        f"{rec['sha256'][:12]}..."
                    )
