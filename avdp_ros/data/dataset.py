"""Read a converted episode dataset (see ``avdp_ros.data.convert`` / docs/dataset_format.md).

Arrays are memory-mapped (``np.load(mmap_mode="r")``): opening a dataset reads only the
manifest and the ``.npy`` headers, so training can index into many GB without loading them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from avdp_ros.data.convert import FORMAT, FORMAT_VERSION


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
                h_ = hashlib.sha256((d / fname).read_bytes()).hexdigest()
                if h_ != rec["sha256"]:
                    raise DatasetError(
                        f"episode {entry['name']}: {fname} sha256 {h_[:12]}..., manifest says "
                        f"{rec['sha256'][:12]}..."
                    )
