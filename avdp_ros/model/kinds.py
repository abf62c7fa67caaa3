"""The model kinds a checkpoint can hold, and the facts about each that the rest of the code reads.

Training (`avdp_ros/train/`), the policy (`model/policy.py`), export and the runtimes
(`avdp_ros/deploy/`) ask `KINDS[kind]` what a kind is instead of comparing kind strings, so a new
kind is one entry here plus one training job (`avdp_ros/train/jobs/`). Pure data: importing
this module loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindSpec:
    """What a checkpoint of one kind holds and how it is used."""

    name: str
    modules: tuple[str, ...]     # module names inside its model.safetensors
    train_command: str           # the console script that trains it
    policy: bool = False         # a `Policy` (and an exported bundle) can be built from it
    has_video: bool = False      # a policy of this kind rolls out the video model before the action head
    actor: str | None = None     # class in model/idm.py that plans the action chunk (policies only)


KINDS: dict[str, KindSpec] = {
    "tokenizer": KindSpec("tokenizer", ("tokenizer",), "avdp-train-tokenizer"),
    "video": KindSpec("video", ("video", "state_norm", "tokenizer"), "avdp-train-video"),
    # video model + inverse dynamics: everything the policy needs at inference, from one directory
    "idm": KindSpec("idm", ("idm", "video", "video_state_norm", "tokenizer"), "avdp-train-idm",
                    policy=True, has_video=True, actor="InverseDynamics"),
    # the action-only policy: same backbone and head, past frames only
    "baseline": KindSpec("baseline", ("baseline", "tokenizer"), "avdp-train-baseline",
                         policy=True, actor="ActionOnlyPolicy"),
}

POLICY_KINDS = tuple(name for name, spec in KINDS.items() if spec.policy)


def kind_spec(kind: str) -> KindSpec:
    """The spec of `kind`; an unknown kind is an error naming the known ones."""
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r}: expected one of {', '.join(KINDS)}")
    return KINDS[kind]


def kind_of_actor(actor_class: str) -> str:
    """The policy kind whose action head is `actor_class` (a class name of model/idm.py)."""
    for name in POLICY_KINDS:
        if KINDS[name].actor == actor_class:
            return name
    raise ValueError(f"{actor_class} is the action head of no policy kind "
                     f"({', '.join(f'{k}: {KINDS[k].actor}' for k in POLICY_KINDS)})")
