import numpy as np
import pytest

from avdp_ros.control.teleop import TeleopConfig, TeleopMapper
from avdp_ros.geometry import axis_angle_to_quat, quat_angle

HOME = np.array([0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])  # gripper pointing down


def test_nothing_is_commanded_before_the_robot_pose_is_known():
    m = TeleopMapper()
    assert m.step(0.02) is None
    assert m.key("w") == []  # ignored, no crash


def test_joy_integrates_velocity_with_deadzone():
    m = TeleopMapper(TeleopConfig(linear_speed=0.1, deadzone=0.1))
    m.reset(HOME)
    m.joy([1.0, 0.05, -0.5, 0, 0, 0], [0, 0])  # y inside the deadzone
    for _ in range(50):
        pose, _ = m.step(0.02)  # 1 s
    np.testing.assert_allclose(pose[:3], HOME[:3] + [0.1, 0.0, -0.05], atol=1e-9)
    assert quat_angle(pose[3:], HOME[3:]) < 1e-9


def test_target_stays_in_workspace_and_nan_axes_are_ignored():
    cfg = TeleopConfig(linear_speed=1.0)
    m = TeleopMapper(cfg)
    m.reset(HOME)
    m.joy([1.0, float("nan"), 1.0, 0, 0, 0], [])
    for _ in range(500):
        pose, _ = m.step(0.02)
    assert np.all(pose[:3] <= np.array(cfg.workspace_max) + 1e-12)
    assert pose[1] == pytest.approx(HOME[1])


def test_keys_step_and_rotate():
    cfg = TeleopConfig(key_step=0.01, key_rot_step=0.1)
    m = TeleopMapper(cfg)
    m.reset(HOME)
    m.key("w")
    m.key("w")
    m.key("q")
    pose, _ = m.step(0.0)
    assert pose[0] == pytest.approx(HOME[0] + 0.02)
    expected = axis_angle_to_quat(np.array([0, 0, 0.1]))
    assert quat_angle(pose[3:], HOME[3:]) == pytest.approx(quat_angle(expected, np.array([0, 0, 0, 1.0])), abs=1e-9)


def test_buttons_are_edge_triggered():
    m = TeleopMapper()
    m.reset(HOME)
    open_width = m.gripper
    assert m.joy([0] * 6, [1, 0]) == ["toggle_gripper"]
    assert m.joy([0] * 6, [1, 0]) == []  # held: no second toggle
    assert m.gripper != open_width
    assert m.joy([0] * 6, [0, 1]) == ["toggle_record"]
    assert m.key(" ") == ["toggle_gripper"] and m.gripper == open_width


def test_config_is_validated():
    with pytest.raises(ValueError, match="6 entries"):
        TeleopConfig(axes=(0, 1))
    with pytest.raises(ValueError, match="below workspace_max"):
        TeleopConfig(workspace_min=(1, 0, 0), workspace_max=(0, 1, 1))
