"""Shared test set-up.

rclpy graph tests get an isolated DDS domain: discovery limited to localhost and a domain id
derived from the process id, so two test runs on one host never hear each other. This must
happen before rclpy is imported anywhere, hence at conftest import time.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ.setdefault("MUJOCO_GL", "egl")
# Same DDS transport profile as the runner/launch files (large shared-memory segment).
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                      os.path.join(os.path.dirname(__file__), "..", "config", "fastdds.xml"))

import pytest  # noqa: E402


def wait_until(predicate, timeout: float, step=None, what: str = "condition"):
    """Poll `predicate` until it is truthy or `timeout` seconds pass; fail the test on timeout.

    `step` (optional) is called on every iteration, e.g. to spin an executor once; it is what
    makes progress, so there is no sleep as synchronisation.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        value = predicate()
        if value:
            return value
        if step is None:
            time.sleep(0.005)  # polling interval only; the condition decides when we go on
    pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")


@pytest.fixture
def rclpy_context():
    """A fresh rclpy context per test, shut down afterwards even when the test fails."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)


def tiny_idm_checkpoint(root, name: str = "idm", use_state: bool = True):
    """Write a tiny idm checkpoint with random weights to root/<name> (16x16 tokenizer: it resizes the
    128x128 sim frames); returns (path, PolicyConfig). For graph tests that need a model, not a good one."""
    import torch

    from avdp_ros.model.checkpoint import save_checkpoint
    from avdp_ros.model.config import preset
    from avdp_ros.model.idm import InverseDynamics, Normalizer
    from avdp_ros.model.tokenizer import TOKENIZER_PRESETS, Tokenizer
    from avdp_ros.model.video import VideoModel

    torch.manual_seed(0)
    tok_cfg = TOKENIZER_PRESETS["tiny"]
    cfg = preset("tiny")
    cfg.tokenizer = tok_cfg.to_dict()
    cfg.idm.use_state = use_state
    video, idm = VideoModel(cfg), InverseDynamics(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every chunk the same
        for m in (video, idm):
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    # relative actions: a few cm around the current pose, identity rotation (6D), gripper ~4 cm
    idm.action_norm.fit(torch.randn(256, 10) * 0.03 + torch.tensor([0, 0, 0, 1, 0, 0, 0, 1, 0, 0.04]))
    save_checkpoint(root / name, "idm", {"idm": idm, "tokenizer": Tokenizer(tok_cfg), "video": video,
                                          "video_state_norm": Normalizer(10)}, cfg.to_dict())
    return root / name, cfg
