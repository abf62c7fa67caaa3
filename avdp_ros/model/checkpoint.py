"""Checkpoints: safetensors weights + a JSON sidecar. Loading never unpickles anything.

Layout of a checkpoint directory::

    <dir>/model.safetensors   tensors of every module, keys "<module>.<param>" (normaliser stats
                              are buffers of their modules, so they travel here too)
    <dir>/checkpoint.json     {"format", "version", "kind", "config", "extra", "data_manifest_sha256",
                               "git_revision", "torch_version", "created_unix", "tensors_sha256"}

`kind` names what the checkpoint holds (e.g. "tokenizer", "video", "idm", "baseline") so a
loader can refuse a mismatched file with a clear message instead of failing on key names.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from avdp_ros.data.files import file_sha256

FORMAT = "avdp-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
SIDECAR = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or not what the caller expected (the message says which)."""


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """`git describe` of the source tree, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: str | os.PathLike, kind: str, modules: dict[str, torch.nn.Module],
                    config: dict[str, Any], extra: dict[str, Any] | None = None,
                    data_manifest: str | os.PathLike | None = None) -> Path:
    """Write `modules`' state dicts and `config` (JSON-serialisable) to directory `path`.

    Args:
        kind: what this checkpoint is; `load_checkpoint(expected_kind=...)` checks it.
        modules: name -> module; tensors are stored as "<name>.<key>".
        config: the model config as plain data (dataclasses.asdict), stored so the model can be
            rebuilt from the file alone.
        extra: anything else JSON-serialisable (training step, metrics).
        data_manifest: the dataset manifest the model was trained on; its hash is recorded.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            # safetensors refuses shared/non-contiguous storage; clone keeps the file portable
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    tmp = path / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path / WEIGHTS)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": config,
        "extra": extra or {},
        "data_manifest_sha256": file_sha256(data_manifest) if data_manifest else None,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "created_unix": time.time(),
        "tensors_sha256": file_sha256(path / WEIGHTS),
    }
    tmp = path / (SIDECAR + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, path / SIDECAR)
    return path


def load_checkpoint(path: str | os.PathLike, expected_kind: str | None = None,
                    verify: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint directory.

    Returns:
        (state dicts by module name, the sidecar dict with "config" and "extra").
    Raises:
        CheckpointError: missing files, wrong format/kind, or weights that do not match their hash.
    """
    path = Path(path)
    sidecar, weights = path / SIDECAR, path / WEIGHTS
    if not sidecar.exists() or not weights.exists():
        raise CheckpointError(f"checkpoint {path}: expected {SIDECAR} and {WEIGHTS} in that directory")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {sidecar}: not valid JSON ({err})") from err
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format {meta.get('format')!r} v{meta.get('version')}, "
                              f"expected {FORMAT!r} v{VERSION}")
    if expected_kind is not None and meta.get("kind") != expected_kind:
        raise CheckpointError(f"checkpoint {path} holds a '{meta.get('kind')}' model, expected '{expected_kind}'")
    if verify and meta.get("tensors_sha256") and file_sha256(weights) != meta["tensors_sha256"]:
        raise CheckpointError(f"checkpoint {weights}: SHA-256 does not match {SIDECAR} (corrupt or replaced file)")
    try:
        flat = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"checkpoint {weights}: unreadable safetensors file ({err})") from err
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, rest = key.partition(".")
        states.setdefault(name, {})[rest] = value
    return states, meta


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`module.load_state_dict(state)` with a message naming the checkpoint part on mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{what}: weights do not fit the model built from its config ({err})") from err
