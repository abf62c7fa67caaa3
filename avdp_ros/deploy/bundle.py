"""Model bundles: a directory of ONNX graphs plus `manifest.json`, the single source of shapes,
normalisation and timing for every backend. Pure Python + numpy (no torch).

Layout::

    <bundle>/manifest.json        see `Bundle` below; written last by the exporter
    <bundle>/<stage>.onnx         one graph per stage (avdp_ros.deploy.stages)
    <bundle>/engines/             TensorRT engines + timing cache (avdp-build-engine; not hashed)

manifest.json::

    format, version               "avdp-bundle", 1
    kind                          a policy kind of model/kinds.py ("idm" | "baseline")
    config                        PolicyConfig.to_dict() (cameras, horizon, obs_hz, vocabulary, ...)
    control                       {obs_hz, dt, horizon, context_frames, future_frames, video_steps,
                                   action_steps, relative_actions, cameras, instructions}
    tokenizer                     {image_size, latent_scale, latent_shape, crops (camera -> region
                                   of interest (top, left, height, width) fractions, cut before the resize)}
    normalizers                   {video_state, state, action}: {mean, std} float lists
    video_mode                    "kv" | "recompute" (which video graphs exist)
    stages                        {name: {file, inputs: [{name, shape, dtype}], outputs: [...]}}
    files                         {file name: sha256} of every graph
    source                        {checkpoint, tensors_sha256} the bundle was exported from
    versions                      {avdp_ros, torch, onnx, opset, onnxruntime?}
    parity                        the exporter's own per-stage check (max abs diff vs torch)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avdp_ros.data.files import file_sha256

FORMAT = "avdp-bundle"
VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("format", "version", "kind", "config", "control", "tokenizer", "normalizers", "video_mode",
            "stages", "files", "versions")


class BundleError(ValueError):
    """A bundle is missing, corrupt, or does not fit what the caller asked for (message says which)."""


class HashMismatchError(BundleError):
    """A file of the bundle is not the one the manifest was written for."""


class ShapeMismatchError(ValueError):
    """An input tensor does not have the shape / dtype the manifest declares."""


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Hash every stage file into `manifest["files"]` and write manifest.json atomically (last, so
    a bundle without a manifest is an unfinished export)."""
    directory = Path(directory)
    manifest = dict(manifest)
    manifest["files"] = {s["file"]: file_sha256(directory / s["file"]) for s in manifest["stages"].values()}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, directory / MANIFEST)
    return directory / MANIFEST


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


class Bundle:
    """A validated bundle directory.

    Args:
        path: the bundle directory.
        verify: check the SHA-256 of every file against the manifest (default; a deployment
            should never run a graph that is not the exported one).
    Raises:
        BundleError: no manifest, wrong format/version, missing keys or files.
        HashMismatchError: a file's SHA-256 differs from the manifest (names file and both hashes).
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"bundle {self.path}: no {MANIFEST} (export one with `avdp-export CHECKPOINT --out DIR`)")
        try:
            m = json.loads(mpath.read_text())
        except json.JSONDecodeError as err:
            raise BundleError(f"bundle {mpath}: not valid JSON ({err})") from err
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise BundleError(f"bundle {mpath}: format {m.get('format')!r} v{m.get('version')}, "
                              f"expected {FORMAT!r} v{VERSION}")
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            raise BundleError(f"bundle {mpath}: manifest lacks {missing}")
        self.manifest = m
        for stage, entry in m["stages"].items():
            if entry["file"] not in m["files"]:
                raise BundleError(f"bundle {mpath}: stage '{stage}' file {entry['file']} has no hash in 'files'")
        if verify:
            self.verify()

    def verify(self) -> None:
        """SHA-256 of every listed file against the manifest."""
        for name, expected in self.manifest["files"].items():
            f = self.path / name
            if not f.is_file():
                raise BundleError(f"bundle {self.path}: {name} is listed in {MANIFEST} but missing")
            actual = file_sha256(f)
            if actual != expected:
                raise HashMismatchError(f"bundle {self.path}: {name} has SHA-256 {actual}, but {MANIFEST} "
                                        f"expects {expected} (file replaced or corrupt; export the bundle again)")

    # ---- accessors ----------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def video_mode(self) -> str:
        return self.manifest["video_mode"]

    @property
    def stages(self) -> list[str]:
        return list(self.manifest["stages"])

    def graph(self, stage: str) -> Path:
        if stage not in self.manifest["stages"]:
            raise BundleError(f"bundle {self.path}: no stage '{stage}' (has {self.stages})")
        return self.path / self.manifest["stages"][stage]["file"]

    def file_sha256(self, stage: str) -> str:
        return self.manifest["files"][self.manifest["stages"][stage]["file"]]

    def _specs(self, stage: str, key: str) -> list[Spec]:
        self.graph(stage)
        return [Spec(s["name"], tuple(s["shape"]), np.dtype(s["dtype"])) for s in self.manifest["stages"][stage][key]]

    def inputs(self, stage: str) -> list[Spec]:
        return self._specs(stage, "inputs")

    def outputs(self, stage: str) -> list[Spec]:
        return self._specs(stage, "outputs")

    def normalizer(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) float32 of normaliser `name` ("video_state", "state", "action")."""
        n = self.manifest["normalizers"].get(name)
        if n is None:
            raise BundleError(f"bundle {self.path}: no normaliser '{name}' in {MANIFEST}")
        return np.asarray(n["mean"], np.float32), np.asarray(n["std"], np.float32)


def check_feeds(stage: str, specs: list[Spec], feeds: dict[str, Any]) -> None:
    """Every declared input present with the declared shape and dtype.

    Raises:
        ShapeMismatchError: naming the stage, the tensor, what was expected and what came.
    """
    for spec in specs:
        if spec.name not in feeds:
            raise ShapeMismatchError(f"stage '{stage}': input '{spec.name}' missing (inputs: "
                                     f"{[s.name for s in specs]})")
        x = feeds[spec.name]
        shape = tuple(x.shape)
        if shape != spec.shape:
            raise ShapeMismatchError(f"stage '{stage}': input '{spec.name}' has shape {shape}, "
                                     f"expected {spec.shape} (from {MANIFEST})")
        dtype = str(x.dtype).replace("torch.", "")
        if dtype != spec.dtype.name:
            raise ShapeMismatchError(f"stage '{stage}': input '{spec.name}' has dtype {dtype}, "
                                     f"expected {spec.dtype.name}")
    extra = set(feeds) - {s.name for s in specs}
    if extra:
        raise ShapeMismatchError(f"stage '{stage}': unknown inputs {sorted(extra)} "
                                 f"(expected {[s.name for s in specs]})")
