"""Human teleoperation: joystick / SpaceMouse axes and keyboard keys -> target pose increments.

Pure logic (no ROS): the teleop node feeds `sensor_msgs/Joy` axes/buttons and key presses in,
and streams `step(dt)`'s target pose and gripper width out.
Translation is in the base frame; rotation increments are applied about base-frame axes at the
current target position, which is what an operator looking at the robot expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avdp_ros.geometry import axis_angle_to_quat, quat_mul, quat_normalize

# key -> (6-vector of unit increments: x y z roll pitch yaw) ; one press = one increment
KEYMAP = {
    "w": (1, 0, 0, 0, 0, 0), "s": (-1, 0, 0, 0, 0, 0),
    "a": (0, 1, 0, 0, 0, 0), "d": (0, -1, 0, 0, 0, 0),
    "r": (0, 0, 1, 0, 0, 0), "f": (0, 0, -1, 0, 0, 0),
    "u": (0, 0, 0, 1, 0, 0), "o": (0, 0, 0, -1, 0, 0),
    "i": (0, 0, 0, 0, 1, 0), "k": (0, 0, 0, 0, -1, 0),
    "q": (0, 0, 0, 0, 0, 1), "e": (0, 0, 0, 0, 0, -1),
}
KEY_GRIPPER = " "  # toggle open/closed
KEY_RECORD = "b"  # begin / end an episode recording
KEY_HELP = (
    "keys: w/s x, a/d y, r/f z, u/o roll, i/k pitch, q/e yaw, space gripper, b start/stop recording"
)


@dataclass
class TeleopConfig:
    linear_speed: float = 0.15  # m/s at full stick deflection
    angular_speed: float = 0.8  # rad/s at full stick deflection
    key_step: float = 0.01  # m per key press
    key_rot_step: float = 0.08  # rad per key press
    deadzone: float = 0.08  # stick deflection below this is noise (SpaceMice drift)
    axes: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # Joy axes for x y z roll pitch yaw (spacenav order)
    axis_signs: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    button_gripper: int = 0  # rising edge toggles the gripper
    button_record: int = 1  # rising edge starts/stops recording
    gripper_open: float = 0.08  # m
    gripper_closed: float = 0.0  # m
    workspace_min: tuple[float, float, float] = (0.2, -0.45, 0.02)
    workspace_max: tuple[float, float, float] = (0.8, 0.45, 0.6)

    def __post_init__(self):
        if len(self.axes) != 6 or len(self.axis_signs) != 6:
            raise ValueError(f"axes {self.axes} / axis_signs {self.axis_signs}: expected 6 entries each "
                             "(x, y, z, roll, pitch, yaw)")
        if np.any(np.asarray(self.workspace_min) >= np.asarray(self.workspace_max)):
            raise ValueError(f"workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")


class TeleopMapper:
    """Integrates operator input into a target pose (7,) and a gripper width."""

    def __init__(self, cfg: TeleopConfig | None = None):
        self.cfg = cfg or TeleopConfig()
        self.target: np.ndarray | None = None
        self.gripper = self.cfg.gripper_open
        self._vel = np.zeros(6)
        self._buttons: list[int] = []

    def reset(self, pose7: np.ndarray) -> None:
        """Start from the robot's current pose, so taking control never makes it jump."""
        self.target = np.array(pose7, dtype=np.float64)
        self._vel[:] = 0.0

    def joy(self, axes: list[float], buttons: list[int]) -> list[str]:
        """Latest Joy message -> velocity command; returns edge-triggered events."""
        c = self.cfg
        v = np.zeros(6)
        for i, (ax, sign) in enumerate(zip(c.axes, c.axis_signs)):
            if ax < len(axes) and np.isfinite(axes[ax]) and abs(axes[ax]) > c.deadzone:
                v[i] = sign * float(np.clip(axes[ax], -1.0, 1.0))
        self._vel = v * np.array([c.linear_speed] * 3 + [c.angular_speed] * 3)
        events = []
        for name, idx in (("toggle_gripper", c.button_gripper), ("toggle_record", c.button_record)):
            now = idx < len(buttons) and bool(buttons[idx])
            was = idx < len(self._buttons) and bool(self._buttons[idx])
            if now and not was:
                events.append(name)
        self._buttons = list(buttons)
        if "toggle_gripper" in events:
            self._toggle_gripper()
        return events

    def key(self, ch: str) -> list[str]:
        """One key press -> one increment (or an event)."""
        if ch == KEY_GRIPPER:
            self._toggle_gripper()
            return ["toggle_gripper"]
        if ch == KEY_RECORD:
            return ["toggle_record"]
        inc = KEYMAP.get(ch.lower())
        if inc is not None and self.target is not None:
            d = np.asarray(inc, dtype=np.float64)
            self._apply(d[:3] * self.cfg.key_step, d[3:] * self.cfg.key_rot_step)
        return []

    def step(self, dt: float) -> tuple[np.ndarray, float] | None:
        """Advance by dt seconds of stick input; returns (target pose, gripper width) or None
        before the first `reset`."""
        if self.target is None:
            return None
        self._apply(self._vel[:3] * dt, self._vel[3:] * dt)
        return self.target.copy(), self.gripper

    def _apply(self, dpos: np.ndarray, drot: np.ndarray) -> None:
        c = self.cfg
        self.target[:3] = np.clip(self.target[:3] + dpos, c.workspace_min, c.workspace_max)
        if np.any(drot != 0.0):
            self.target[3:] = quat_normalize(quat_mul(axis_angle_to_quat(drot), self.target[3:]))

    def _toggle_gripper(self) -> None:
        c = self.cfg
        self.gripper = c.gripper_closed if self.gripper > 0.5 * (c.gripper_open + c.gripper_closed) else c.gripper_open
