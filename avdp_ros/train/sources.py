"""Where a job's starting point comes from: `--resume` (this run's latest checkpoint), `--init`
(another run's weights, optionally moved onto a new tokenizer), a `--preset` with `--override`
edits, or a tokenizer checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avdp_ros.data.latents import build_vocabulary
from avdp_ros.model.checkpoint import load_checkpoint, load_into
from avdp_ros.model.tokenizer import Tokenizer, TokenizerConfig
from avdp_ros.train.engine import LATEST


def resume_states(out: Path, kind: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    path = out / LATEST
    if not path.exists():
        raise SystemExit(f"--resume: {path} does not exist; start without --resume")
    return load_checkpoint(path, expected_kind=kind)


# Fields an --override may change on --resume or --init: how the trained model samples and how its
# training draws noise levels, not what the model is.
RESUME_OVERRIDABLE = ("action_temperature", "action_steps", "video_steps", "idm.future_t",
                      "video.context_noise", "video.clean_prefix_prob", "video.rollout_prob", "idm.future_drop",
                      "idm.video_loss_weight")


def _flat(d: dict) -> dict:
    """{"idm": {"future_t": 0}} -> {"idm.future_t": 0}: one level, as --override names fields."""
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in d.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}


def resume_config(args: argparse.Namespace, ckpt_cfg: dict) -> dict:
    """The resumed checkpoint's config with the --override edits that only change sampling or the
    training noise levels (RESUME_OVERRIDABLE); any other edit would not fit the trained weights:
    an error, not ignored."""
    from avdp_ros.model.config import PolicyConfig

    # through the dataclass: a checkpoint written before a field existed reads its default, which
    # an --override may then name
    cfg = PolicyConfig.from_dict(ckpt_cfg)
    d = cfg.to_dict()  # a fresh copy each call: the edits leave the checkpoint's own untouched
    apply_overrides(d, getattr(args, "override", None) or [])
    new, old = _flat(d), _flat(cfg.to_dict())
    changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
    bad = [k for k in changed if k not in RESUME_OVERRIDABLE]
    if bad:
        raise SystemExit(f"--override changes {bad} of the checkpoint being resumed; with --resume only "
                         f"{list(RESUME_OVERRIDABLE)} may change (start a new run to change the model)")
    return d


def init_source(args: argparse.Namespace, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """--init CKPT [--tokenizer NEW]: the config and weights of a trained `kind` checkpoint to
    fine-tune from (the --override edits of --resume allowed). With --tokenizer, the
    model is carried over to that tokenizer's latents (a re-cropped or longer-trained one of the
    same latent shape, checked when the data is set up)."""
    states, meta = load_checkpoint(args.init, expected_kind=kind)
    cfg = resume_config(args, meta["config"])
    if args.tokenizer:
        new_tok = load_tokenizer(args.tokenizer, torch.device("cpu"))
        cfg = dict(cfg, tokenizer=new_tok.config.to_dict())
        states = dict(states, tokenizer=new_tok.state_dict())
    return cfg, states


def apply_overrides(d: dict, overrides: list[str]) -> None:
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, _, name = key.rpartition(".")
        target = d[section] if section else d
        if not sep or not isinstance(target, dict) or name not in target:
            raise SystemExit(f"--override {item!r}: expected FIELD=VALUE or SECTION.FIELD=VALUE with a field "
                             f"of the config (e.g. idm.patch_size=2, horizon=8)")
        try:
            target[name] = json.loads(raw)
        except json.JSONDecodeError:
            target[name] = raw  # a bare string


def preset_with_overrides(args: argparse.Namespace):
    """The --preset PolicyConfig with --override SECTION.FIELD=VALUE edits (validated by the config)."""
    from avdp_ros.model.config import PolicyConfig, idm_head, preset

    cfg = preset(args.preset)
    if getattr(args, "head", None):
        cfg = idm_head(cfg, args.head)
    d = cfg.to_dict()
    apply_overrides(d, getattr(args, "override", None) or [])
    try:
        return PolicyConfig.from_dict(d)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--override: {err}") from err


def policy_config(args: argparse.Namespace, tok: Tokenizer, cameras: list[str], roots: Sequence[Path]):
    cfg = preset_with_overrides(args)
    return dataclasses.replace(cfg, tokenizer=tok.config.to_dict(), latent_shape=tok.config.latent_shape,
                               cameras=tuple(cameras), instructions=tuple(build_vocabulary(roots)))


def frozen_tokenizer(config: dict[str, Any], state: dict[str, torch.Tensor], device: torch.device,
                     what: str) -> Tokenizer:
    """A tokenizer rebuilt from a checkpoint's config dict + state dict, frozen, on `device`."""
    tok = Tokenizer(TokenizerConfig.from_dict(config))
    load_into(tok, state, what)
    return tok.to(device).eval().requires_grad_(False)


def load_tokenizer(path: str, device: torch.device) -> Tokenizer:
    """The frozen tokenizer of a tokenizer checkpoint or of any checkpoint that stores one (a
    policy, a video model): `--tokenizer models/avdp_default` trains on the shipped latents."""
    from avdp_ros.deploy.backends import checkpoint_dir  # the one run / latest/ rule of every loader
    from avdp_ros.model.tokenizer import checkpoint_tokenizer

    try:
        tok = checkpoint_tokenizer(checkpoint_dir(path) or path).to(device)
    except ValueError as exc:
        raise SystemExit(f"--tokenizer {path}: {exc}") from None
    for prm in tok.parameters():
        prm.requires_grad_(False)
    return tok
