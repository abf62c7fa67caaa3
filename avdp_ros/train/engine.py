"""The training loop every job runs: device and DDP set-up, AdamW with warmup + cosine, EMA,
resumable checkpoints, a tqdm bar and the loss history.

Plain `python` launches run single-process with the same code; under `torchrun` the process
group is joined and rank 0 logs and writes. Run directory layout (`--out`)::

    <out>/latest/           checkpoint (save_checkpoint) + optimizer.safetensors + trainer.json
                            (+ raw.safetensors: the optimised weights, when the checkpoint holds their EMA)
    <out>/history.json      every logged step: {"step", "lr", <loss logs>, "val/<metric>"...}
    <out>/loss.png          loss curves (train and validation)
    <out>/*.gif             predicted vs real frames (video runs)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from avdp_ros.train.plots import plot_history

LATEST = "latest"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
RAW_WEIGHTS = "raw.safetensors"
HISTORY_FILE = "history.json"
LOSS_PNG = "loss.png"


@dataclass
class TrainConfig:
    """Optimisation settings of one run; stored in every checkpoint's `extra`."""

    steps: int = 1000              # total optimizer steps (resume continues up to this)
    batch_size: int = 32           # per process
    lr: float = 3e-4               # peak learning rate
    min_lr_ratio: float = 0.1      # cosine floor, as a fraction of lr
    warmup_steps: int = 100        # linear warmup from 0
    weight_decay: float = 0.01     # AdamW, on >= 2-D weights only
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0         # max global grad norm; 0 disables
    ema_decay: float = 0.0         # > 0: validate and ship an exponential moving average of the weights
    log_every: int = 10            # steps between history entries
    val_every: int = 200           # steps between validations (and at the end)
    ckpt_every: int = 200          # steps between checkpoints (and at the end)
    seed: int = 0
    device: str = "auto"           # "auto" = cuda if available, else cpu
    num_workers: int = 0           # DataLoader workers

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay}: expected in [0, 1) (0 disables the EMA)")


# -- process set-up --------------------------------------------------------------------------


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> if available else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here; use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Dist:
    """Process group facts; a plain launch is rank 0 of world 1."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_name: str = "auto", threads: int | None = None) -> tuple[Dist, torch.device]:
    """Join the process group when launched by `torchrun` (WORLD_SIZE > 1), else run alone.

    `threads` sets torch's CPU intra-op threads (small models on shared cores run faster with 1).
    """
    if threads:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_name)
    info = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    device = pick_device(device_name, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# -- optimisation ----------------------------------------------------------------------------


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/kernels only (not biases, norms, embeddings' 1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine down to lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """Optimizer state as safetensors (keys "<param index>.<name>") + hyperparameters in JSON."""
    sd = opt.state_dict()
    tensors = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(tensors, str(path))
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": list(g["params"])}
              for g in sd["param_groups"]]
    path.with_suffix(".json").write_text(json.dumps({"param_groups": groups, "scalars": scalars}, default=list))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    flat = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


class EMA:
    """Exponential moving average of a model's weights, the weights a diffusion policy is usually
    evaluated and shipped with (diffusion_policy, openpi): the average over the last ~1/(1-decay)
    steps sits nearer the optimum than any one noisy step. The decay ramps up as
    min(decay, (1 + n) / (10 + n)) after n updates, so that a short run or a fine-tune is not
    dominated by its starting weights. Buffers (normaliser statistics) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float, updates: int = 0) -> None:
        self.decay = decay
        self.updates = updates
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can store (no shared or non-contiguous storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


# -- data ------------------------------------------------------------------------------------


def make_loader(dataset: Dataset, batch_size: int, info: Dist, seed: int, num_workers: int = 0,
                drop_last: bool = True) -> tuple[DataLoader, Any]:
    """Shuffled DataLoader; a DistributedSampler under DDP. Returns (loader, sampler)."""
    if len(dataset) == 0:
        raise ValueError("training set is empty: check --data, --label-fraction and --val-fraction")
    if info.enabled:
        sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed,
                                     drop_last=drop_last)
    else:
        g = torch.Generator()
        g.manual_seed(seed)
        sampler = RandomSampler(dataset, generator=g)
    per_rank = len(dataset) // info.world_size
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=drop_last and per_rank >= batch_size)
    return loader, sampler


def forever(loader: DataLoader, sampler: Any, start_epoch: int = 0) -> Iterator[Any]:
    epoch = start_epoch
    while True:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# -- the loop --------------------------------------------------------------------------------


@dataclass
class Run:
    """What the loop needs to know about one run; the CLI fills it in."""

    out: Path
    kind: str                                   # checkpoint kind ("tokenizer", "video", "idm", "baseline")
    model: nn.Module                            # trained module (wrapped in DDP here when distributed)
    loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]  # (bare model, batch) -> loss, logs
    dataset: Dataset
    cfg: TrainConfig
    save_fn: Callable[[nn.Module, Path, dict[str, Any]], None]  # (bare model, dir, extra) -> writes checkpoint
    validate_fn: Callable[[nn.Module, int], dict[str, float]] | None = None  # (bare model, step) -> metrics
    finalize_fn: Callable[[nn.Module], None] | None = None  # before the last checkpoint (e.g. latent scale)


class _LossModule(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch)


def train(run: Run, info: Dist, device: torch.device, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Optimise `run.model` for `run.cfg.steps` steps; returns the last history entry.

    Resume (`resume=True`) reloads `<out>/latest` (weights, optimizer, step, history) and goes on
    from the saved step; the data order is reseeded with (seed, step) so it does not replay.

    With `cfg.ema_decay > 0` the checkpoints, the validation and `finalize_fn` get the EMA of the
    weights (see EMA); the optimised weights are saved beside them for --resume. The caller has
    loaded the checkpoint's weights into `run.model` on resume: they become the EMA's, and the
    optimised ones are read back from `<out>/latest/raw.safetensors` when the run kept one.
    """
    from tqdm import tqdm

    cfg = run.cfg
    out = Path(run.out)
    model = run.model.to(device)
    opt = make_optimizer(model, cfg)
    step, history = 0, []
    latest = out / LATEST
    if resume:
        if not (latest / TRAINER_FILE).exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {latest} (expected {TRAINER_FILE}); "
                                    "start without --resume")
        trainer = json.loads((latest / TRAINER_FILE).read_text())
        step = int(trainer["step"])
        load_optimizer(opt, latest / OPTIMIZER_FILE)
    ema = None
    if cfg.ema_decay > 0:  # on resume it starts from the checkpoint's weights, the EMA if the run kept one
        ema = EMA(model, cfg.ema_decay, updates=trainer.get("ema_updates", 0) if resume else 0)
    if resume:
        if (latest / RAW_WEIGHTS).exists():  # the checkpoint holds the EMA; training goes on from these
            model.load_state_dict(load_file(str(latest / RAW_WEIGHTS), device=str(device)))
        if (out / HISTORY_FILE).exists():
            history = [h for h in json.loads((out / HISTORY_FILE).read_text()) if h["step"] <= step]
    # DDP syncs gradients through forward(), so the loss call is routed through one
    ddp_model: nn.Module = _LossModule(model, run.loss_fn)
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            ddp_model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # e.g. an IDM without video features leaves a projection unused
    loader, sampler = make_loader(run.dataset, cfg.batch_size, info, cfg.seed + 7919 * step, cfg.num_workers)
    batches = forever(loader, sampler)
    shipped = ema.model if ema is not None else model  # what is validated, finalised and saved

    def checkpoint(at: int, last: dict[str, Any]) -> None:
        if not info.is_main:
            return
        extra = {"step": at, "train": cfg.to_dict(), "metrics": last}
        tmp = out / (LATEST + ".tmp")
        run.save_fn(shipped, tmp, extra)
        save_optimizer(opt, tmp / OPTIMIZER_FILE)
        trainer_state: dict[str, Any] = {"step": at, "train": cfg.to_dict()}
        if ema is not None:
            save_file(state_tensors(model), str(tmp / RAW_WEIGHTS))
            trainer_state["ema_updates"] = ema.updates
        (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state))
        old = out / (LATEST + ".old")
        if latest.exists():
            latest.rename(old)
        tmp.rename(latest)
        if old.exists():
            import shutil

            shutil.rmtree(old)
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        plot_history(history, out / LOSS_PNG, run.kind)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    # Without the bar (logs) the validation lines below still print: tqdm.write ignores `disable`.
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {run.kind}", disable=not (info.is_main and progress),
               dynamic_ncols=True)
    model.train()
    last: dict[str, Any] = history[-1] if history else {}
    running: dict[str, float] = {}
    n_running = 0
    tick = time.perf_counter()
    while step < cfg.steps:
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(batches)
        batch = to_device(batch, device)
        loss, logs = ddp_model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            logs = dict(logs, grad_norm=float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)))
        opt.step()
        if ema is not None:
            ema.update(model)
        step += 1
        for k, v in logs.items():
            running[k] = running.get(k, 0.0) + float(v)
        n_running += 1
        bar.update(1)
        is_last = step == cfg.steps
        do_val = (step % cfg.val_every == 0 or is_last) and run.validate_fn is not None
        if step % cfg.log_every == 0 or is_last or do_val:
            now = time.perf_counter()
            last = {"step": step, "lr": lr, **{k: v / n_running for k, v in running.items()},
                    "samples_per_s": n_running * cfg.batch_size * info.world_size / max(now - tick, 1e-9)}
            running, n_running = {}, 0
            bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}")
            if do_val and info.is_main:
                shipped.eval()
                with torch.no_grad():
                    metrics = run.validate_fn(shipped, step)
                model.train()
                last.update({f"val/{k}": v for k, v in metrics.items()})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            history.append(last)
            tick = time.perf_counter()  # throughput excludes validation time
        if is_last and run.finalize_fn is not None and info.is_main:
            run.finalize_fn(shipped)
        if step % cfg.ckpt_every == 0 or is_last:
            checkpoint(step, last)
        info.barrier()
    bar.close()
    return last
