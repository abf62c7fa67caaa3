"""Training CLIs: tokenizer, video model, inverse dynamics (IDM) and the action-only baseline.

    avdp-train-tokenizer --data DS [DS ...] --out runs/tok --preset base
    avdp-train-video     --data DS [DS ...] --tokenizer runs/tok/latest --out runs/video
    avdp-train-idm       --data DS [DS ...] --video runs/video/latest --out runs/idm --label-fraction 0.5
    avdp-train-baseline  --data DS [DS ...] --tokenizer runs/tok/latest --out runs/base

Every run writes `<out>/latest/` (a checkpoint.save_checkpoint directory plus optimizer state),
`<out>/history.json` and `<out>/loss.png`; video runs also write `<out>/rollout.gif`. `--resume`
continues from `<out>/latest`. Under `torchrun --nproc_per_node N` the same commands train with
DDP (rank 0 logs and writes). The episode split (held-out validation episodes) depends only on
`--seed` and `--val-fraction`, so video, IDM and baseline runs hold out the same episodes.

Checkpoint contents (module names inside model.safetensors):
- tokenizer: {"tokenizer"}; config = TokenizerConfig (latent_scale set at the end of training).
- video:     {"video", "state_norm", "tokenizer"}; config = PolicyConfig.
- idm:       {"idm", "video", "video_state_norm", "tokenizer"}; config = PolicyConfig. Everything
             the policy needs at inference, from one directory.
- baseline:  {"baseline", "tokenizer"}; config = PolicyConfig.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.model import train_utils as tu
from avdp_ros.model.checkpoint import file_sha256, load_checkpoint, load_into, save_checkpoint
from avdp_ros.model.tokenizer import (
    TOKENIZER_PRESETS,
    LatentDataset,
    Tokenizer,
    TokenizerConfig,
    build_vocabulary,
    cache_latents,
    calibrate_latent_scale,
    list_episodes,
    resize_uint8,
)

VAL_WINDOWS = 64      # validation windows per evaluation (video / idm / baseline)
VAL_IMAGES = 256      # validation images per tokenizer evaluation
CALIB_IMAGES = 2048   # training images used to compute the tokenizer's latent_scale
GIF_NAME = "rollout.gif"


# -- shared CLI plumbing ---------------------------------------------------------------------


def _parser(prog: str, doc: str, defaults: tu.TrainConfig) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--data", nargs="+", required=True, help="converted dataset roots (avdp-convert output)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, history, plots)")
    p.add_argument("--preset", choices=("tiny", "base"), default="base", help="model size (default %(default)s)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="total steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process (default %(default)s)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: min(100, steps // 10)")
    p.add_argument("--ema", type=float, default=defaults.ema_decay, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights with this decay, "
                        "e.g. 0.999 (default %(default)s = off)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds init, data order and the episode split")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out episodes (default %(default)s)")
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--val-every", type=int, default=defaults.val_every)
    p.add_argument("--ckpt-every", type=int, default=defaults.ckpt_every)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (torch.set_num_threads); default: torch's choice")
    p.add_argument("--resume", action="store_true", help="continue from <out>/latest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for latent caching")
    p.add_argument("--override", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="edit the preset's config, e.g. --override idm.patch_size=2 (repeatable); with "
                        "--resume only the sampling fields action_temperature, action_steps, video_steps")
    return p


def _train_config(args: argparse.Namespace) -> tu.TrainConfig:
    warmup = args.warmup_steps if args.warmup_steps is not None else min(100, max(args.steps // 10, 1))
    try:
        return tu.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=warmup,
                              log_every=args.log_every, val_every=args.val_every, ckpt_every=args.ckpt_every,
                              seed=args.seed, device=args.device, num_workers=args.num_workers,
                              ema_decay=args.ema)
    except ValueError as e:
        raise SystemExit(f"--ema: {e}") from None


def _data_record(roots: Sequence[Path]) -> list[dict[str, Any]]:
    return [{"root": str(r.resolve()), "manifest_sha256": file_sha256(r / "manifest.json")} for r in roots]


def _check_roots(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Dataset roots and their common camera list (all roots must have the same cameras)."""
    roots = [Path(p).expanduser() for p in paths]
    cams = None
    for r in roots:
        ds = EpisodeDataset(r, validate=False)
        if cams is not None and ds.cameras != cams:
            raise SystemExit(f"--data {r}: cameras {ds.cameras}, but {roots[0]} has {cams}")
        cams = ds.cameras
    return roots, list(cams or [])


def _split(roots: Sequence[Path], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    keys = [ref.key for ref in list_episodes(roots)]
    return tu.split_keys(keys, args.val_fraction, args.seed)


def _resume_states(out: Path, kind: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    path = out / tu.LATEST
    if not path.exists():
        raise SystemExit(f"--resume: {path} does not exist; start without --resume")
    return load_checkpoint(path, expected_kind=kind)


# -- tokenizer -------------------------------------------------------------------------------


class ImageSet(torch.utils.data.Dataset):
    """Every frame of every camera of the given episodes, cropped (`crops`: camera -> fractions)
    and resized once to (3, S, S) uint8 in memory."""

    def __init__(self, roots: Sequence[Path], keys: set[str], size: int, stride: int = 1,
                 crops: dict[str, Sequence[float]] | None = None) -> None:
        chunks = []
        datasets = {r: EpisodeDataset(r, validate=False) for r in roots}
        for ref in list_episodes(roots):
            if ref.key not in keys:
                continue
            ds = datasets[ref.root]
            ep = ds[ref.name]
            for cam in ds.cameras:
                chunks.append(resize_uint8(np.asarray(ep[cam][::stride]), size, (crops or {}).get(cam)))  # (T', 3, S, S)
        self.images = torch.cat(chunks) if chunks else torch.zeros(0, 3, size, size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _parse_crops(p: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, tuple[float, ...]]:
    from avdp_ros.images import check_crop

    crops = {}
    for item in items:
        cam, sep, box = item.partition("=")
        try:
            if not sep or not cam:
                raise ValueError("expected CAMERA=TOP,LEFT,HEIGHT,WIDTH")
            crops[cam] = check_crop(box.split(","), f"--crop {cam}")
        except ValueError as err:
            p.error(f"--crop {item!r}: {err}")
    return crops


def main_tokenizer(argv: Sequence[str] | None = None) -> int:
    """avdp-train-tokenizer: train the AutoencoderKL tokenizer, then set its latent_scale."""
    p = _parser("avdp-train-tokenizer", "Train the image tokenizer (AutoencoderKL).",
                tu.TrainConfig(steps=2000, batch_size=32, lr=1e-3))
    p.add_argument("--kl-weight", type=float, default=None, help="override the preset's kl_weight")
    p.add_argument("--frame-stride", type=int, default=1, help="use every N-th frame (default %(default)s)")
    p.add_argument("--crop", action="append", default=[], metavar="CAMERA=TOP,LEFT,HEIGHT,WIDTH",
                   help="region of interest of a camera, fractions of its frame, cut out before the resize "
                        "(e.g. camera=0.41,0.2,0.5,0.5); repeatable; stored in the tokenizer's config")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this tokenizer's weights (fine-tuning, e.g. for a new --crop)")
    args = p.parse_args(argv)
    crops = _parse_crops(p, args.crop)
    info, device = tu.setup_distributed(args.device, args.threads)
    try:
        tu.seed_everything(args.seed + info.rank)
        cfg = _train_config(args)
        roots, cameras = _check_roots(args.data)
        out = Path(args.out)
        if set(crops) - set(cameras):
            raise SystemExit(f"--crop names cameras {sorted(set(crops) - set(cameras))}; the data has {cameras}")
        if args.resume:
            states, meta = _resume_states(out, "tokenizer")
            tok = Tokenizer(TokenizerConfig.from_dict(meta["config"]))
            load_into(tok, states["tokenizer"], f"{out / tu.LATEST}")
            if crops or args.init:
                raise SystemExit("--resume continues the run as it was: --crop / --init do not apply")
        else:
            if args.init:
                init_states, init_meta = load_checkpoint(args.init, expected_kind="tokenizer")
                tcfg = TokenizerConfig.from_dict(init_meta["config"])
            else:
                tcfg = dataclasses.replace(TOKENIZER_PRESETS[args.preset])
            if args.kl_weight is not None:
                tcfg.kl_weight = args.kl_weight
            tcfg.crops = {**tcfg.crops, **crops}
            tok = Tokenizer(tcfg)
            if args.init:
                load_into(tok, init_states["tokenizer"], f"--init {args.init}")
        train_keys, val_keys = _split(roots, args)
        S = tok.config.image_size
        train_set = ImageSet(roots, set(train_keys), S, args.frame_stride, tok.config.crops)
        val_set = ImageSet(roots, set(val_keys), S, max(args.frame_stride, 1), tok.config.crops)
        gen = torch.Generator().manual_seed(args.seed)
        val_images = val_set.images[torch.randperm(len(val_set), generator=gen)[:VAL_IMAGES]]
        if info.is_main:
            print(f"tokenizer {args.preset}: {sum(p.numel() for p in tok.parameters()) / 1e6:.2f} M params, "
                  f"latents {tok.config.latent_shape}; {len(train_set)} train / {len(val_set)} val images; "
                  f"device {device}", file=sys.stderr)

        def loss_fn(model: Tokenizer, batch: torch.Tensor):
            return model.loss(batch.float() / 255.0)

        def validate(model: Tokenizer, step: int) -> dict[str, float]:
            if len(val_images) == 0:
                return {}
            x = val_images.to(device).float() / 255.0
            rec = torch.cat([model.reconstruct(x[i:i + 64]) for i in range(0, len(x), 64)])
            return {"psnr": tu.psnr(rec, x).mean().item(), "ssim": tu.ssim(rec, x).mean().item(),
                    "object_l1": tu.object_l1(rec, x).nanmean().item()}

        def finalize(model: Tokenizer) -> None:
            idx = torch.randperm(len(train_set), generator=gen)[:CALIB_IMAGES]
            batches = (train_set.images[idx[i:i + 64]].to(device).float() / 255.0 for i in range(0, len(idx), 64))
            scale = calibrate_latent_scale(model, batches)
            print(f"latent_scale = {scale:.4f}", file=sys.stderr)

        def save(model: Tokenizer, path: Path, extra: dict[str, Any]) -> None:
            model.save(path, dict(extra, data=_data_record(roots), val_episodes=val_keys),
                       data_manifest=roots[0] / "manifest.json")

        run = tu.Run(out=out, kind="tokenizer", model=tok, loss_fn=loss_fn, dataset=train_set, cfg=cfg,
                     save_fn=save, validate_fn=validate, finalize_fn=finalize)
        last = tu.train(run, info, device, resume=args.resume)
        if info.is_main:
            print(json.dumps(last), file=sys.stderr)
    finally:
        tu.cleanup_distributed()
    return 0


# -- latent-space runs (video, idm, baseline) ------------------------------------------------


@dataclasses.dataclass
class LatentSetup:
    roots: list[Path]
    tokenizer: Tokenizer
    cfg: Any                    # PolicyConfig
    train: LatentDataset
    val: LatentDataset
    val_keys: list[str]


# Fields an --override may change on --resume: how the trained model samples, not what it is.
RESUME_OVERRIDABLE = ("action_temperature", "action_steps", "video_steps")


def _resume_config(args: argparse.Namespace, ckpt_cfg: dict) -> dict:
    """The resumed checkpoint's config with the --override edits that only change sampling
    (RESUME_OVERRIDABLE); any other edit would not fit the trained weights: an error, not ignored."""
    d = json.loads(json.dumps(ckpt_cfg))
    _apply_overrides(d, getattr(args, "override", None) or [])
    changed = sorted(k for k in set(d) | set(ckpt_cfg) if d.get(k) != ckpt_cfg.get(k))
    bad = [k for k in changed if k not in RESUME_OVERRIDABLE]
    if bad:
        raise SystemExit(f"--override changes {bad} of the checkpoint being resumed; with --resume only "
                         f"{list(RESUME_OVERRIDABLE)} may change (start a new run to change the model)")
    return d


def _init_source(args: argparse.Namespace, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """--init CKPT [--tokenizer NEW]: the config and weights of a trained `kind` checkpoint to
    fine-tune from (sampling-only --override edits allowed, as on --resume). With --tokenizer, the
    model is carried over to that tokenizer's latents (a re-cropped or longer-trained one of the
    same latent shape, checked when the data is set up)."""
    states, meta = load_checkpoint(args.init, expected_kind=kind)
    cfg = _resume_config(args, meta["config"])
    if args.tokenizer:
        new_tok = Tokenizer.from_checkpoint(args.tokenizer)
        cfg = dict(cfg, tokenizer=new_tok.config.to_dict())
        states = dict(states, tokenizer=new_tok.state_dict())
    return cfg, states


def _apply_overrides(d: dict, overrides: list[str]) -> None:
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


def _preset_with_overrides(args: argparse.Namespace):
    """The --preset PolicyConfig with --override SECTION.FIELD=VALUE edits (validated by the config)."""
    from avdp_ros.model.config import PolicyConfig, preset

    d = preset(args.preset).to_dict()
    _apply_overrides(d, getattr(args, "override", None) or [])
    try:
        return PolicyConfig.from_dict(d)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--override: {err}") from err


def _policy_config(args: argparse.Namespace, tok: Tokenizer, cameras: list[str], roots: Sequence[Path]):
    cfg = _preset_with_overrides(args)
    return dataclasses.replace(cfg, tokenizer=tok.config.to_dict(), latent_shape=tok.config.latent_shape,
                               cameras=tuple(cameras), instructions=tuple(build_vocabulary(roots)))


def _latent_setup(args: argparse.Namespace, info: tu.Dist, tok: Tokenizer, cfg_from_ckpt: dict | None,
                  require_actions: bool, label_fraction: float = 1.0) -> LatentSetup:
    """Cache latents (rank 0), build the PolicyConfig and the train/val window datasets."""
    from avdp_ros.model.config import PolicyConfig

    roots, cameras = _check_roots(args.data)
    caches = []
    for r in roots:
        if info.is_main:
            caches.append((r, cache_latents(r, tok, progress=not args.no_progress)))
        info.barrier()
        if not info.is_main:
            caches.append((r, cache_latents(r, tok, progress=False)))  # present now: no encoding
    cfg = PolicyConfig.from_dict(cfg_from_ckpt) if cfg_from_ckpt else _policy_config(args, tok, cameras, roots)
    unknown = sorted(set(build_vocabulary(roots)) - set(cfg.instructions))
    if unknown:  # they would all read as <unk>: the model could not tell the new tasks apart
        raise SystemExit(f"the data has instructions the checkpoint's vocabulary does not know: {unknown} "
                         f"(it knows {list(cfg.instructions[1:])}); train a new model on all the data "
                         "to add tasks")
    if tuple(cfg.latent_shape) != tuple(tok.config.latent_shape):
        raise SystemExit(f"tokenizer latents {tok.config.latent_shape} do not match the config's "
                         f"latent_shape {cfg.latent_shape}")
    train_keys, val_keys = _split(roots, args)
    if require_actions:
        # Failed demonstrations (recorded success false) teach the failure; leave them to the
        # video model unless asked. Unknown success (teleop without a verdict) counts as a demo.
        refs = [ref for ref in list_episodes(roots) if ref.has_actions and ref.key in set(train_keys)]
        labelled = [ref.key for ref in refs if ref.success is not False or getattr(args, "include_failed", False)]
        if len(labelled) < len(refs) and info.is_main:
            print(f"{len(refs) - len(labelled)} failed demonstrations left out of action training "
                  "(--include-failed keeps them)", file=sys.stderr)
        train_keys = tu.label_subset(labelled, label_fraction, args.seed)
    kw = dict(context_frames=cfg.context_frames, future_frames=cfg.future_frames, horizon=cfg.horizon,
              vocab=cfg.instructions, cameras=cfg.cameras, require_actions=require_actions)
    train = LatentDataset(caches, episodes=train_keys, **kw)
    if len(train) == 0:  # before any statistics are fitted on nothing
        raise ValueError(f"training set is empty: {len(train_keys)} training episodes"
                         f"{' with action labels' if require_actions else ''} in {[str(r) for r in roots]}; "
                         "check --data, --label-fraction, --val-fraction (and --include-failed)")
    val = LatentDataset(caches, episodes=val_keys, **kw)
    if info.is_main:
        n_lab = sum(a is not None for a in train.actions)
        print(f"{len(train.refs)} train episodes ({n_lab} with actions), {len(val.refs)} val episodes; "
              f"{len(train)} train windows", file=sys.stderr)
    return LatentSetup(roots, tok, cfg, train, val, val_keys)


def _val_indices(ds: LatentDataset, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(ds), generator=gen)[:VAL_WINDOWS].tolist()


def _stack(ds: LatentDataset, idx: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in idx]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}


def _frozen_tokenizer(config: dict[str, Any], state: dict[str, torch.Tensor], device: torch.device,
                     what: str) -> Tokenizer:
    """A tokenizer rebuilt from a checkpoint's config dict + state dict, frozen, on `device`."""
    tok = Tokenizer(TokenizerConfig.from_dict(config))
    load_into(tok, state, what)
    return tok.to(device).eval().requires_grad_(False)


def _load_tokenizer(path: str, device: torch.device) -> Tokenizer:
    tok = Tokenizer.from_checkpoint(path, map_location=device)
    for prm in tok.parameters():
        prm.requires_grad_(False)
    return tok


def _latent_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return _parser(prog, doc, tu.TrainConfig(steps=5000, batch_size=64, lr=3e-4, val_every=500, ckpt_every=500))


# -- video -----------------------------------------------------------------------------------


def _future_images(s: LatentSetup, idx: Sequence[int], k: int) -> torch.Tensor:
    """Real frames t+1..t+k of validation windows as (N, k, cams, 3, S, S) float in [0, 1]."""
    S = s.tokenizer.config.image_size
    out = []
    for i in idx:
        e, t = s.val.index[i]
        ref = s.val.refs[e]
        ep = EpisodeDataset(ref.root, validate=False)[ref.name]
        frames = np.clip(np.arange(t + 1, t + k + 1), 0, ref.length - 1)
        cams = [resize_uint8(np.asarray(ep[c][frames]), S, s.tokenizer.config.crops.get(c))
                for c in s.cfg.cameras]  # each (k, 3, S, S)
        out.append(torch.stack(cams, dim=1).float() / 255.0)  # (k, cams, 3, S, S)
    return torch.stack(out)


def _decode_frames(tok: Tokenizer, latents: torch.Tensor) -> torch.Tensor:
    """(N, k, cams, C, h, w) -> (N, k, cams, 3, S, S)."""
    flat = latents.flatten(0, 2)
    img = torch.cat([tok.decode(flat[i:i + 256]) for i in range(0, len(flat), 256)])
    return img.view(*latents.shape[:3], *img.shape[1:])


def main_video(argv: Sequence[str] | None = None) -> int:
    """avdp-train-video: train the autoregressive latent video model on every episode."""
    from avdp_ros.model.idm import Normalizer
    from avdp_ros.model.video import VideoModel

    p = _latent_parser("avdp-train-video", "Train the latent video model (diffusion forcing).")
    p.add_argument("--tokenizer", help="tokenizer checkpoint directory (required unless --resume or --init)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this video checkpoint's weights and config (a fine-tune with a new "
                        "schedule); with --tokenizer, on that tokenizer's latents (same latent shape)")
    p.add_argument("--rollout-steps", type=int, default=None, help="Euler steps per frame in validation")
    args = p.parse_args(argv)
    if args.resume and args.init:
        raise SystemExit("--resume continues the run as it was: --init does not apply")
    info, device = tu.setup_distributed(args.device, args.threads)
    try:
        tu.seed_everything(args.seed + info.rank)
        cfg_t = _train_config(args)
        out = Path(args.out)
        src_cfg, states, what = None, {}, ""
        if args.resume:
            states, meta = _resume_states(out, "video")
            src_cfg, what = _resume_config(args, meta["config"]), f"{out / tu.LATEST}"
        elif args.init:
            (src_cfg, states), what = _init_source(args, "video"), f"--init {args.init}"
        if src_cfg is not None:
            tok = _frozen_tokenizer(src_cfg["tokenizer"], states["tokenizer"], device, f"{what} tokenizer")
        elif args.tokenizer:
            tok = _load_tokenizer(args.tokenizer, device)
        else:
            raise SystemExit("--tokenizer is required (the tokenizer checkpoint directory)")
        s = _latent_setup(args, info, tok, src_cfg, require_actions=False)
        model = VideoModel(s.cfg)
        state_norm = Normalizer(10).fit(torch.from_numpy(s.train.state_rows()))
        if states:  # the weights learned under the source's state statistics keep them
            load_into(model, states["video"], f"{what} video")
            load_into(state_norm, states["state_norm"], f"{what} state_norm")
        state_norm.to(device)
        if info.is_main:
            print(f"video model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, device {device}",
                  file=sys.stderr)
        val_idx = _val_indices(s.val, args.seed)
        K = s.cfg.future_frames
        real = _future_images(s, val_idx, K) if val_idx else None  # (N, K, cams, 3, S, S)

        def loss_fn(m: VideoModel, b: dict[str, torch.Tensor]):
            latents = torch.cat([b["context"], b["future"]], dim=1)  # (B, Fc+K, cams, C, h, w)
            loss, logs = m.loss(latents, b["instr"], state_norm.normalize(b["states"]))
            return loss, dict(logs, loss=loss.item())

        def validate(m: VideoModel, step: int) -> dict[str, float]:
            if not val_idx:
                return {}
            b = _stack(s.val, val_idx, device)
            gen = torch.Generator(device="cpu").manual_seed(args.seed)
            noise = torch.randn((len(val_idx), K) + b["context"].shape[2:], generator=gen).to(device)
            state = state_norm.normalize(b["states"][:, :s.cfg.context_frames])
            pred, _ = m.rollout(b["context"], b["instr"], state, k=K, steps=args.rollout_steps, noise=noise)
            pred_img = _decode_frames(tok, pred).cpu()  # (N, K, cams, 3, S, S)
            recon_img = _decode_frames(tok, b["future"]).cpu()
            metrics = {"latent_mse": (pred - b["future"]).pow(2).mean().item()}
            for j in range(K):
                a, r = pred_img[:, j].flatten(0, 1), real[:, j].flatten(0, 1)
                metrics[f"psnr_{j + 1}"] = tu.psnr(a, r).mean().item()
                metrics[f"ssim_{j + 1}"] = tu.ssim(a, r).mean().item()
            metrics["psnr_tokenizer"] = tu.psnr(recon_img.flatten(0, 2), real.flatten(0, 2)).mean().item()
            tu.save_comparison_gif(real[0], pred_img[0], out / GIF_NAME)
            return metrics

        def save(m: VideoModel, path: Path, extra: dict[str, Any]) -> None:
            save_checkpoint(path, "video", {"video": m, "state_norm": state_norm, "tokenizer": tok},
                            s.cfg.to_dict(), dict(extra, data=_data_record(s.roots), val_episodes=s.val_keys),
                            data_manifest=s.roots[0] / "manifest.json")

        run = tu.Run(out=out, kind="video", model=model, loss_fn=loss_fn, dataset=s.train, cfg=cfg_t,
                     save_fn=save, validate_fn=validate)
        last = tu.train(run, info, device, resume=args.resume)
        if info.is_main:
            print(json.dumps(last), file=sys.stderr)
    finally:
        tu.cleanup_distributed()
    return 0


# -- idm / baseline --------------------------------------------------------------------------


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


@torch.no_grad()
def video_feature_table(windows: LatentDataset, video, video_norm, context_frames: int, device: torch.device,
                        batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """Video-model features (N, Fc+K, D) of every window's context + true future frames (on CPU)."""
    from tqdm import tqdm

    rows = []
    for start in tqdm(range(0, len(windows), batch_size), desc="video features", disable=not progress,
                      unit="batch"):
        b = _stack(windows, range(start, min(start + batch_size, len(windows))), device)
        seq = torch.cat([b["context"], b["future"]], dim=1)  # (B, Fc+K, cams, C, h, w)
        rows.append(video.features(seq, b["instr"], video_norm.normalize(b["states"][:, :context_frames])).cpu())
    return torch.cat(rows) if rows else torch.zeros(0)


def early_window_indices(windows: LatentDataset, early_frames: int, weight: int) -> list[int]:
    """Window indices, those whose last observed frame is < `early_frames` repeated `weight` times.

    Why: at an episode's start every pose is the same, so the first chunk must come from the
    images alone (where the cube and the goal are), while later windows can lean on the state
    and the visible motion. Those start windows are a few percent of the data and the ones a closed-loop
    rollout cannot recover from, so they get more of the gradient.
    """
    return [i for i, (_, t) in enumerate(windows.index) for _ in range(weight if t < early_frames else 1)]


def _action_main(argv: Sequence[str] | None, kind: str) -> int:
    from avdp_ros.model.idm import ActionBatch, ActionOnlyPolicy, InverseDynamics, Normalizer
    from avdp_ros.model.video import VideoModel

    is_idm = kind == "idm"
    prog = "avdp-train-idm" if is_idm else "avdp-train-baseline"
    doc = ("Train the inverse dynamics policy on action-labelled episodes (video model frozen)." if is_idm
           else "Train the action-only baseline (same backbone, no video model).")
    p = _latent_parser(prog, doc)
    if is_idm:
        p.add_argument("--video", help="video checkpoint directory (gives the tokenizer, the config and the "
                                       "frozen video model; required unless --resume)")
    else:
        p.add_argument("--tokenizer", help="tokenizer checkpoint directory (required unless --resume or --init)")
        p.add_argument("--init", metavar="CHECKPOINT",
                       help="start from this baseline checkpoint's weights and config (a fine-tune with a new "
                            "schedule); with --tokenizer, on that tokenizer's latents (same latent shape)")
    p.add_argument("--include-failed", action="store_true",
                   help="also train actions on demonstrations recorded as failed (default: left out)")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="fraction of action-labelled training episodes to use, seeded (default %(default)s)")
    p.add_argument("--action-steps", type=int, default=None, help="Euler steps for validation samples")
    p.add_argument("--early-weight", type=int, default=1,
                   help="draw windows of an episode's first --early-frames frames this many times as often "
                        "(default %(default)s = uniform); see early_window_indices")
    p.add_argument("--early-frames", type=int, default=10, help="frames counted as the episode start "
                                                                 "(default %(default)s)")
    args = p.parse_args(argv)
    if args.early_weight < 1 or args.early_frames < 0:
        raise SystemExit(f"--early-weight {args.early_weight} (expected >= 1) / --early-frames {args.early_frames} "
                         "(expected >= 0)")
    info, device = tu.setup_distributed(args.device, args.threads)
    try:
        tu.seed_everything(args.seed + info.rank)
        cfg_t = _train_config(args)
        out = Path(args.out)
        video = video_norm = None
        if args.resume:
            states, meta = _resume_states(out, kind)
            src_cfg, src_states = _resume_config(args, meta["config"]), states
        elif is_idm:
            if not args.video:
                raise SystemExit("--video is required (the video checkpoint directory)")
            src_states, vmeta = load_checkpoint(args.video, expected_kind="video")
            # the video side (tokenizer, latents, frames, vocabulary) comes from the video model; the
            # action side (horizon, action space, IDM architecture, sampler steps) from --preset
            action_side = _preset_with_overrides(args)
            src_cfg = dict(vmeta["config"], horizon=action_side.horizon, relative_actions=action_side.relative_actions,
                           action_steps=action_side.action_steps, action_temperature=action_side.action_temperature,
                           idm=dataclasses.asdict(action_side.idm))
            src_states = {"tokenizer": src_states["tokenizer"], "video": src_states["video"],
                          "video_state_norm": src_states["state_norm"]}
        elif getattr(args, "init", None):
            src_cfg, src_states = _init_source(args, kind)
        else:
            if not args.tokenizer:
                raise SystemExit("--tokenizer is required (the tokenizer checkpoint directory)")
            src_cfg, src_states = None, {}
        if src_cfg is not None:
            tok = _frozen_tokenizer(src_cfg["tokenizer"], src_states["tokenizer"], device, "tokenizer")
        else:
            tok = _load_tokenizer(args.tokenizer, device)
        s = _latent_setup(args, info, tok, src_cfg, require_actions=True, label_fraction=args.label_fraction)
        if is_idm:
            video = VideoModel(s.cfg)
            load_into(video, src_states["video"], "video")
            video_norm = Normalizer(10)
            load_into(video_norm, src_states["video_state_norm"], "video_state_norm")
            video = video.to(device).eval().requires_grad_(False)
            video_norm = video_norm.to(device)
        policy = InverseDynamics(s.cfg) if is_idm else ActionOnlyPolicy(s.cfg)
        policy.state_norm.fit(torch.from_numpy(s.train.state_rows()))
        chunks, starts = (torch.from_numpy(x) for x in s.train.action_chunks())
        policy.action_norm.fit(policy.action_space(chunks, starts))
        if args.resume:
            load_into(policy, states[kind], f"{out / tu.LATEST} {kind}")
        elif getattr(args, "init", None):
            load_into(policy, src_states[kind], f"--init {args.init} {kind}")
        if info.is_main:
            print(f"{kind}: {sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M params, device {device}",
                  file=sys.stderr)
        use_features = is_idm and s.cfg.idm.video_feature_dim > 0

        train_set = s.train
        if use_features:
            table = video_feature_table(s.train, video, video_norm, s.cfg.context_frames, device,
                                        progress=info.is_main and not args.no_progress)
            train_set = WithFeatures(s.train, table)
        if args.early_weight > 1:
            idx = early_window_indices(s.train, args.early_frames, args.early_weight)
            if info.is_main:
                print(f"episode-start windows weighted x{args.early_weight}: {len(idx)} draws per epoch "
                      f"for {len(s.train)} windows", file=sys.stderr)
            train_set = torch.utils.data.Subset(train_set, idx)

        def features(b: dict[str, torch.Tensor], latents_future: torch.Tensor) -> torch.Tensor | None:
            if not use_features:
                return None
            if "video_features" in b and latents_future is b["future"]:
                return b["video_features"]  # precomputed for the true future
            with torch.no_grad():
                seq = torch.cat([b["context"], latents_future], dim=1)  # (B, Fc+K, cams, C, h, w)
                state = video_norm.normalize(b["states"][:, :s.cfg.context_frames])
                return video.features(seq, b["instr"], state)  # (B, Fc+K, n_embd)

        def batch_of(m, b: dict[str, torch.Tensor], future: torch.Tensor | None = None) -> ActionBatch:
            future = b["future"] if future is None else future
            return ActionBatch(context=b["context"], state=m.state_norm.normalize(b["state"]), instr=b["instr"],
                               future=future if is_idm else None, actions=m.normalize_actions(b["actions"], b["state"]),
                               video_features=features(b, future))

        def loss_fn(m, b: dict[str, torch.Tensor]):
            loss, logs = m.loss(batch_of(m, b))
            return loss, dict(logs, loss=loss.item())

        val_idx = _val_indices(s.val, args.seed)

        def validate(m, step: int) -> dict[str, float]:
            if not val_idx:
                return {}
            b = _stack(s.val, val_idx, device)
            gen = torch.Generator(device="cpu").manual_seed(args.seed)
            noise = torch.randn((len(val_idx), s.cfg.horizon, 10), generator=gen).to(device)
            metrics: dict[str, float] = {}
            futures = {"": None}
            if is_idm:
                vnoise = torch.randn((len(val_idx), s.cfg.future_frames) + b["context"].shape[2:],
                                     generator=gen).to(device)
                state = video_norm.normalize(b["states"][:, :s.cfg.context_frames])
                pred, _ = video.rollout(b["context"], b["instr"], state, k=s.cfg.future_frames, noise=vnoise)
                futures = {"": pred, "gt_future/": b["future"]}  # as at inference / teacher-forced
            for prefix, fut in futures.items():
                a = m.unnormalize_actions(m.sample(batch_of(m, b, fut), steps=args.action_steps, noise=noise),
                                          b["state"])
                metrics.update({prefix + k: v for k, v in tu.action_errors(a, b["actions"]).items()})
            return metrics

        def save(m, path: Path, extra: dict[str, Any]) -> None:
            modules = {kind: m, "tokenizer": tok}
            if is_idm:
                modules.update(video=video, video_state_norm=video_norm)
            save_checkpoint(path, kind, modules, s.cfg.to_dict(),
                            dict(extra, data=_data_record(s.roots), val_episodes=s.val_keys,
                                 label_fraction=args.label_fraction,
                                 train_episodes=[r.key for r in s.train.refs]),
                            data_manifest=s.roots[0] / "manifest.json")

        run = tu.Run(out=out, kind=kind, model=policy, loss_fn=loss_fn, dataset=train_set, cfg=cfg_t,
                     save_fn=save, validate_fn=validate)
        last = tu.train(run, info, device, resume=args.resume)
        if info.is_main:
            print(json.dumps(last), file=sys.stderr)
    finally:
        tu.cleanup_distributed()
    return 0


def main_idm(argv: Sequence[str] | None = None) -> int:
    """avdp-train-idm: train InverseDynamics on action-labelled episodes (frozen video model)."""
    return _action_main(argv, "idm")


def main_baseline(argv: Sequence[str] | None = None) -> int:
    """avdp-train-baseline: train ActionOnlyPolicy (same backbone, past frames only)."""
    return _action_main(argv, "baseline")


if __name__ == "__main__":
    commands = {"tokenizer": main_tokenizer, "video": main_video, "idm": main_idm, "baseline": main_baseline}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: python -m avdp_ros.tools.train {{{','.join(commands)}}} ...")
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
