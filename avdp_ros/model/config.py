"""Configs of the video model, the inverse dynamics policy and the whole policy, plus presets.

`PolicyConfig` declares the shapes once (cameras, latent shape, frame counts, horizon, vocabulary);
`VideoModel`, `InverseDynamics` and `ActionOnlyPolicy` are all built from a `PolicyConfig` and read
their architecture from its `video` / `idm` parts. A checkpoint stores `PolicyConfig.to_dict()` so
the models can be rebuilt from the file alone.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STATE_DIM = 10   # proprio: ee position (3) + rot6d (6) + gripper width (1)
ACTION_DIM = 10  # one action: target ee position (3) + rot6d (6) + gripper width (1)
UNK = "<unk>"    # vocabulary entry 0: what an unknown or empty instruction reads as


def tokenizer_downsample(levels: int) -> int:
    """Side ratio image / latent of a tokenizer with `levels` blocks: AutoencoderKL halves the side
    once per block after the first. Here (pure) so configs can check shapes without torch."""
    return 2 ** (levels - 1)


def tokenizer_latent_shape(image_size: int, latent_channels: int, levels: int) -> tuple[int, int, int]:
    """(C, h, w) latents of one image (see `tokenizer_downsample`)."""
    side = image_size // tokenizer_downsample(levels)
    return (latent_channels, side, side)


def instruction_index(vocab: Sequence[str], text: str | None) -> int:
    """Vocabulary index of an instruction string; unknown or empty strings map to 0 (`UNK`)."""
    try:
        return list(vocab).index(text) if text else 0
    except ValueError:
        return 0


def _check_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} = {value}: expected > 0")


def _check_heads(owner: str, n_embd: int, n_head: int) -> None:
    if n_embd % n_head:
        raise ValueError(f"{owner}: n_embd {n_embd} not divisible by n_head {n_head}")


@dataclass
class VideoConfig:
    """Architecture of the autoregressive latent video model (`model/video.py`)."""

    patch_size: int = 2              # latent patch side; tokens per camera = (h / p) * (w / p)
    n_embd: int = 192                # transformer width
    n_head: int = 6                  # attention heads (n_embd must be divisible by it)
    n_layer: int = 4                 # transformer blocks
    mlp_ratio: float = 4.0           # MLP hidden width = mlp_ratio * n_embd
    max_frames: int = 8              # frame position embeddings; >= context_frames + future_frames
    logit_normal_t: bool = True      # training noise levels ~ logit-normal (else uniform)
    clean_prefix_prob: float = 0.5   # per sample: probability that a random prefix of frames is clean
    #                                  (t = 0, no loss), the rollout situation of clean context frames
    context_noise: float = 0.0       # those context frames are noised to a flow time ~ U(0, context_noise)
    #                                  instead (the model is told it; still no loss): it learns to read
    #                                  imperfect context, as its own predicted frames are at rollout,
    #                                  where the error otherwise compounds frame by frame (drift:
    #                                  bench/video_spread.py's one-ahead MSE against the rollout's)
    rollout_prob: float = 0.0        # share of training steps that take the rollout loss instead: the
    #                                  model rolls out 1..K-1 frames after the true context itself (no
    #                                  gradient), and learns the true frames after them from that
    #                                  context (`VideoModel.rollout_loss`): its own errors, not noise

    def __post_init__(self) -> None:
        _check_positive("VideoConfig", patch_size=self.patch_size, n_embd=self.n_embd, n_head=self.n_head,
                        n_layer=self.n_layer, mlp_ratio=self.mlp_ratio, max_frames=self.max_frames)
        _check_heads("VideoConfig", self.n_embd, self.n_head)
        for name in ("clean_prefix_prob", "context_noise", "rollout_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"VideoConfig.{name} = {getattr(self, name)}: expected in [0, 1]")


FUTURE_NOISE = ("none", "independent")
FUTURE_INPUT = ("frames", "tokens")
VIDEO_TRAIN = ("frozen", "joint")


@dataclass
class IDMConfig:
    """Architecture of the observation encoder + flow-matching action head (`model/idm.py`)."""

    patch_size: int = 4              # latent patch side of the observation encoder (coarser than video)
    n_embd: int = 128                # width of encoder and action head
    n_head: int = 4                  # attention heads
    enc_layers: int = 2              # observation encoder blocks (bidirectional self-attention)
    head_layers: int = 3             # action head blocks (self-attention over H actions + cross-attention)
    mlp_ratio: float = 4.0           # MLP hidden width = mlp_ratio * n_embd
    past_frames: int = 1             # most recent observed frames the IDM and the baseline see. 1, because
    #                                  with a history of frames a policy can read the motion off the
    #                                  past and continue it ("copycat"), learning to locate the object
    #                                  only from the few episode-start windows; it then fails at the
    #                                  start of every closed-loop episode. (The video model sees all.)
    video_feature_dim: int = 0       # width of video-model features fed to the IDM; 0 = not used
    use_state: bool = True           # feed the proprio state (ee pose + gripper) to the encoder. With it,
    #                                  a policy can continue the path it is on from the pose alone
    #                                  ("copycat" through proprio) and never learn to find the cube in
    #                                  the image: at the episode start, where every pose is the same,
    #                                  it then guesses. Relative actions still use the state outside
    #                                  the network, and the arm is visible in both cameras.
    logit_normal_t: bool = True      # training flow times ~ logit-normal (else uniform)
    future_noise: str = "none"       # how the IDM learns to read its future frames (IDM_HEADS):
    #                                  "none": the true future, clean (teacher forcing; at inference it
    #                                  then reads predicted frames it never saw in training);
    #                                  "independent": UWM-style, the future is noised to its own flow
    #                                  time t_f in training and the encoder is told t_f, so one model
    #                                  holds the action-only policy (t_f = 1) and the inverse dynamics
    #                                  (t_f = 0), and learns how far to trust a future at each level
    future_drop: float = 0.25        # "independent": share of training windows whose future is pure noise
    future_t: float = 0.0            # "independent": flow time the predicted future is re-noised to at
    #                                  inference; 1 = ignore it (no video rollout: the action-only mode)
    future_input: str = "frames"     # "frames": the IDM reads K future frames (true in training, predicted
    #                                  at inference); "tokens": VPP-style, no frames: the video model's
    #                                  hidden states of one pass over the clean context and K pure-noise
    #                                  future slots (its first denoising step), pooled by attention into
    #                                  `video_tokens` tokens. Pure noise in training and at inference
    #                                  alike, so what the head reads never changes between the two
    video_tokens: int = 16           # "tokens": pooled video tokens the encoder reads
    video_train: str = "frozen"      # "frozen": two-stage, the video model is fixed and no action
    #                                  gradient reaches it; "joint" (future_input "tokens" only, the one
    #                                  input an action gradient can flow back through): the video model
    #                                  is the shared backbone of both objectives, trained on with the
    #                                  action loss + video_loss_weight * its own diffusion loss on the
    #                                  same windows (Seer / UVA style)
    video_loss_weight: float = 1.0   # "joint": weight of the auxiliary video loss (0 = the action loss alone)

    def __post_init__(self) -> None:
        if self.future_noise not in FUTURE_NOISE:
            raise ValueError(f"IDMConfig.future_noise = {self.future_noise!r}: expected one of {FUTURE_NOISE}")
        if self.future_input not in FUTURE_INPUT:
            raise ValueError(f"IDMConfig.future_input = {self.future_input!r}: expected one of {FUTURE_INPUT}")
        if self.future_input == "tokens" and (self.future_noise != "none" or self.video_feature_dim):
            raise ValueError("IDMConfig.future_input 'tokens' reads no future frames and no mean-pooled features: "
                             f"future_noise must be 'none' (got {self.future_noise!r}) and video_feature_dim 0 "
                             f"(got {self.video_feature_dim})")
        if self.video_train not in VIDEO_TRAIN:
            raise ValueError(f"IDMConfig.video_train = {self.video_train!r}: expected one of {VIDEO_TRAIN}")
        if self.video_train == "joint" and self.future_input != "tokens":
            raise ValueError("IDMConfig.video_train 'joint' trains the video model through the tokens the head "
                             f"reads: future_input must be 'tokens' (got {self.future_input!r}; a frames head "
                             "reads true futures in training, which no gradient turns into predictions)")
        if self.video_loss_weight < 0:
            raise ValueError(f"IDMConfig.video_loss_weight = {self.video_loss_weight}: expected >= 0")
        if self.video_tokens < 1:
            raise ValueError(f"IDMConfig.video_tokens = {self.video_tokens}: expected >= 1")
        for name in ("future_drop", "future_t"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"IDMConfig.{name} = {getattr(self, name)}: expected in [0, 1]")
        _check_positive("IDMConfig", patch_size=self.patch_size, n_embd=self.n_embd, n_head=self.n_head,
                        enc_layers=self.enc_layers, head_layers=self.head_layers, mlp_ratio=self.mlp_ratio,
                        past_frames=self.past_frames)
        _check_heads("IDMConfig", self.n_embd, self.n_head)
        if self.video_feature_dim < 0:
            raise ValueError(f"IDMConfig.video_feature_dim = {self.video_feature_dim}: expected >= 0 (0 = unused)")


@dataclass
class PolicyConfig:
    """Everything needed to rebuild the video model and the action policies from a checkpoint."""

    tokenizer: dict[str, Any] = field(default_factory=dict)  # TokenizerConfig as plain data (owned by tokenizer.py)
    latent_shape: tuple[int, int, int] = (4, 8, 8)  # (C, h, w) latents of one camera image
    cameras: tuple[str, ...] = ("camera", "wrist")   # camera order inside a frame
    obs_hz: float = 10.0             # frame rate of observations and of actions
    context_frames: int = 4          # Fc: past frames the video model conditions on
    future_frames: int = 4           # K: frames the video model predicts per policy step
    horizon: int = 8                 # H: actions per chunk (at obs_hz)
    instructions: tuple[str, ...] = (UNK,)  # vocabulary; index 0 is UNK for unknown strings
    relative_actions: bool = False   # chunks relative to the state they were planned from
    #                                  (position offset + relative rotation; see rotation.actions_to_relative)
    video_steps: int = 2             # default Euler steps per predicted frame
    action_steps: int = 8            # default Euler steps for an action chunk
    action_temperature: float = 1.0  # scale of the action sampler's starting noise when none is injected:
    #                                  1 samples the learned distribution, < 1 moves toward its mode
    #                                  (less spread where the policy is unsure, e.g. the first chunk)
    video: VideoConfig = field(default_factory=VideoConfig)
    idm: IDMConfig = field(default_factory=IDMConfig)

    def __post_init__(self) -> None:
        # from_dict / JSON give lists; keep tuples so configs compare equal and stay hashable-ish
        self.latent_shape = tuple(int(v) for v in self.latent_shape)
        self.cameras = tuple(self.cameras)
        self.instructions = tuple(self.instructions)
        if isinstance(self.video, dict):
            self.video = VideoConfig(**self.video)
        if isinstance(self.idm, dict):
            self.idm = IDMConfig(**self.idm)
        if len(self.latent_shape) != 3 or min(self.latent_shape) <= 0:
            raise ValueError(f"PolicyConfig.latent_shape = {self.latent_shape}: expected positive (C, h, w)")
        _, h, w = self.latent_shape
        for owner, p in (("video", self.video.patch_size), ("idm", self.idm.patch_size)):
            if h % p or w % p:
                raise ValueError(f"PolicyConfig.{owner}.patch_size {p} does not divide latent size {h}x{w}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"PolicyConfig.cameras = {self.cameras}: expected distinct camera names")
        if not self.instructions or self.instructions[0] != UNK:
            raise ValueError(f"PolicyConfig.instructions must start with '{UNK}', got {self.instructions[:1]}")
        if len(set(self.instructions)) != len(self.instructions):
            raise ValueError("PolicyConfig.instructions has duplicate strings")
        _check_positive("PolicyConfig", obs_hz=self.obs_hz, context_frames=self.context_frames,
                        future_frames=self.future_frames, horizon=self.horizon,
                        video_steps=self.video_steps, action_steps=self.action_steps)
        if not 0.0 <= self.action_temperature <= 2.0:
            raise ValueError(f"PolicyConfig.action_temperature = {self.action_temperature}: expected in [0, 2]")
        if self.context_frames + self.future_frames > self.video.max_frames:
            raise ValueError(f"PolicyConfig: context_frames {self.context_frames} + future_frames "
                             f"{self.future_frames} exceeds video.max_frames {self.video.max_frames}")
        if self.idm.past_frames > self.context_frames:
            raise ValueError(f"PolicyConfig: idm.past_frames {self.idm.past_frames} exceeds "
                             f"context_frames {self.context_frames}")
        if self.idm.video_feature_dim not in (0, self.video.n_embd):
            raise ValueError(f"PolicyConfig: idm.video_feature_dim {self.idm.video_feature_dim} must be 0 (unused) "
                             f"or the video model width video.n_embd {self.video.n_embd}")
        self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        """If the tokenizer dict says enough to derive its latent shape, it must match ours."""
        tok = self.tokenizer
        if not {"image_size", "latent_channels", "block_out_channels"} <= tok.keys():
            return
        expected = tokenizer_latent_shape(int(tok["image_size"]), int(tok["latent_channels"]),
                                          len(tok["block_out_channels"]))
        if expected != self.latent_shape:
            raise ValueError(f"PolicyConfig.latent_shape {self.latent_shape} does not match the tokenizer "
                             f"config, which gives {expected}")

    @property
    def n_cameras(self) -> int:
        return len(self.cameras)

    def instruction_index(self, text: str) -> int:
        """Vocabulary index of an instruction string; unknown strings map to 0 (`UNK`)."""
        return instruction_index(self.instructions, text)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        d["cameras"] = list(self.cameras)
        d["instructions"] = list(self.instructions)
        d["tokenizer"] = copy.deepcopy(self.tokenizer)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        """Inverse of `to_dict`; unknown keys raise so a stale checkpoint fails loudly."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"PolicyConfig.from_dict: unknown keys {sorted(unknown)}")
        d = dict(d)
        d["video"] = VideoConfig(**d.get("video", {}))
        d["idm"] = IDMConfig(**d.get("idm", {}))
        return cls(**d)


SIM_INSTRUCTIONS = (
    UNK,
    "push the red cube onto the green target region",
    "pick up the red cube and place it in the blue bin",
)

PRESETS: dict[str, PolicyConfig] = {
    # CPU unit tests: a forward + backward in milliseconds
    "tiny": PolicyConfig(
        latent_shape=(4, 4, 4), context_frames=2, future_frames=2, horizon=4,
        instructions=SIM_INSTRUCTIONS, relative_actions=True, video_steps=2, action_steps=4,
        video=VideoConfig(patch_size=2, n_embd=32, n_head=2, n_layer=2, max_frames=4),
        idm=IDMConfig(patch_size=2, n_embd=32, n_head=2, enc_layers=1, head_layers=1, video_feature_dim=32),
    ),
    # sim tasks: 64x64 images -> (4, 8, 8) latents, 16 video tokens per camera, trainable on CPU
    "base": PolicyConfig(
        latent_shape=(4, 8, 8), context_frames=4, future_frames=4, horizon=8,
        instructions=SIM_INSTRUCTIONS, relative_actions=True, video_steps=2, action_steps=8,
        video=VideoConfig(patch_size=2, n_embd=192, n_head=6, n_layer=4, max_frames=8),
        idm=IDMConfig(patch_size=4, n_embd=128, n_head=4, enc_layers=2, head_layers=3, video_feature_dim=192),
    ),
}


# Action-head presets of the IDM: `avdp-train-idm --head NAME` applies one entry to the preset's idm
# section (then --override edits win). Each names how the head meets its test-time inputs.
IDM_HEADS: dict[str, dict[str, Any]] = {
    # teacher forcing: clean true futures and mean-pooled video features of true clips (the original)
    "teacher": {"future_noise": "none", "future_input": "frames", "video_train": "frozen"},
    # UWM-style independent noise levels for the future and the action chunk; no video features
    # (features of a true clip are an input the policy never sees at test time)
    "uwm": {"future_noise": "independent", "future_input": "frames", "video_feature_dim": 0, "video_train": "frozen"},
    # VPP-style: no frames; the video model's tokens of its first denoising step from pure noise,
    # attention-pooled (the same input in training and at inference; no rollout needed to act)
    "vpp": {"future_input": "tokens", "future_noise": "none", "video_feature_dim": 0, "video_train": "frozen"},
    # Seer / UVA-style shared backbone: the VPP input, but the video model trains on with the action
    # loss through the tokens plus its own diffusion loss as an auxiliary objective (joint training)
    "shared": {"future_input": "tokens", "future_noise": "none", "video_feature_dim": 0, "video_train": "joint",
               "video_loss_weight": 1.0},
}


def idm_head(cfg: PolicyConfig, name: str) -> PolicyConfig:
    """`cfg` with the IDM action-head preset `name` applied (see IDM_HEADS)."""
    if name not in IDM_HEADS:
        raise ValueError(f"unknown IDM head {name!r}: expected one of {sorted(IDM_HEADS)}")
    return dataclasses.replace(cfg, idm=dataclasses.replace(cfg.idm, **IDM_HEADS[name]))


def preset(name: str) -> PolicyConfig:
    """A fresh copy of a named preset (so callers may edit it freely)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
