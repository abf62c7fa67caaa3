"""The model-kind registry: every kind has one training job and one console script, the facts
the loaders read agree with what the jobs save, and no module outside the registry branches on
a kind's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from avdp_ros.model import idm as heads
from avdp_ros.model.kinds import KINDS, POLICY_KINDS, kind_of_actor, kind_spec
from avdp_ros.train.jobs import JOBS

ROOT = Path(__file__).resolve().parents[1]


def test_every_kind_has_one_job_and_one_console_script():
    assert set(JOBS) == set(KINDS)
    scripts = dict(re.findall(r'"([\w-]+) = avdp_ros\.tools\.train:(\w+)"', (ROOT / "setup.py").read_text()))
    assert set(scripts) == {spec.train_command for spec in KINDS.values()}
    for kind, job in JOBS.items():
        assert job.kind == kind and job().parser().prog == KINDS[kind].train_command


def test_policy_kinds_name_an_action_head_class():
    assert set(POLICY_KINDS) == {"idm", "baseline"}
    for kind in POLICY_KINDS:
        assert kind_of_actor(getattr(heads, KINDS[kind].actor).__name__) == kind
    assert KINDS["idm"].has_video and not KINDS["baseline"].has_video


def test_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="'diffusion_transformer'.*tokenizer, video, idm, baseline"):
        kind_spec("diffusion_transformer")
    with pytest.raises(ValueError, match="no policy kind"):
        kind_of_actor("Normalizer")


def test_no_code_compares_kind_strings():
    """Per-kind facts live in model/kinds.py: a `kind == "idm"` elsewhere would drift from it."""
    pattern = re.compile(r"""kind\s*[!=]=\s*["'](idm|baseline|video|tokenizer)["']""")
    hits = [f"{f.relative_to(ROOT)}:{i}" for d in ("avdp_ros", "bench") for f in (ROOT / d).rglob("*.py")
            for i, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
