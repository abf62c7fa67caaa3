"""Operational-space (Cartesian impedance) controller for the Panda, pure numpy + mujoco.

Per physics step (1 kHz at the default physics_dt = 0.001 s):

    tau = J^T Lambda (Kp e_pose - Kd v)  +  N^T M (kp_null (q_home - q) - kd_null dq)  +  qfrc_bias

with J the 6 x 7 TCP Jacobian, M the 7 x 7 arm inertia, Lambda = (J M^-1 J^T)^-1 the task-space
inertia, N = I - J^T Jbar^T the dynamically consistent null-space projector and qfrc_bias the
gravity + Coriolis torques. Because Lambda scales the PD term, Kp and Kd are acceleration gains
(1/s^2 and 1/s): the closed loop behaves like a unit mass-spring-damper per task-space axis, and
the physical stiffness is Lambda * Kp (a few hundred to a few thousand N/m on the Panda).

The controller reads MuJoCo state directly (it is the robot's torque loop, not a policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from avdp_ros.geometry import quat_normalize, quat_to_mj


@dataclass
class ControllerConfig:
    # Translational acceleration gain (1/s^2); sqrt gives the bandwidth (~20 rad/s).
    pos_stiffness: float = 400.0
    # Rotational acceleration gain (1/s^2).
    rot_stiffness: float = 400.0
    # Damping ratio of both task-space loops (1 = critically damped).
    damping_ratio: float = 1.0
    # Null-space posture gain (1/s^2) pulling the elbow towards the home posture.
    null_stiffness: float = 10.0
    # Largest translational error acted upon (m); bounds the force when the target jumps.
    max_pos_error: float = 0.10
    # Largest rotational error acted upon (rad).
    max_rot_error: float = 0.5
    # Workspace box (m, base frame) that targets are clamped into.
    workspace_min: tuple[float, float, float] = (0.2, -0.4, 0.0)
    workspace_max: tuple[float, float, float] = (0.8, 0.4, 0.5)
    # Per-joint torque limits (Nm); the Franka datasheet values.
    torque_limits: tuple[float, ...] = field(
        default_factory=lambda: (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
    )

    def __post_init__(self) -> None:
        for name in ("pos_stiffness", "rot_stiffness", "damping_ratio", "null_stiffness",
                     "max_pos_error", "max_rot_error"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"ControllerConfig.{name} = {value!r}: expected a finite value > 0")
        lo, hi = np.asarray(self.workspace_min, float), np.asarray(self.workspace_max, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(lo < hi):
            raise ValueError(
                f"workspace_min {self.workspace_min} / workspace_max {self.workspace_max}: expected "
                "two 3-vectors with min < max on every axis"
            )
        if len(self.torque_limits) != 7 or min(self.torque_limits) <= 0:
            raise ValueError(f"torque_limits {self.torque_limits}: expected 7 positive values")


class OperationalSpaceController:
    """Cartesian impedance controller writing arm torques into ``data.ctrl``.

    Args:
        model: compiled model; the arm's actuators must be torque motors (gear 1).
        cfg: gains and workspace.
        site: name of the TCP site that is controlled.
        arm_joints: the 7 arm joint names (base to wrist).
        arm_actuators: the 7 motor actuator names, same order.
        q_home: (7,) posture the null-space term pulls towards.
    """

    def __init__(self, model: mujoco.MjModel, cfg: ControllerConfig, site: str,
                 arm_joints, arm_actuators, q_home: np.ndarray):
        self.model = model
        self.cfg = cfg
        self.site_id = model.site(site).id
        self.dof = np.array([model.jnt_dofadr[model.joint(j).id] for j in arm_joints])
        self.qadr = np.array([model.jnt_qposadr[model.joint(j).id] for j in arm_joints])
        self.act = np.array([model.actuator(a).id for a in arm_actuators])
        self.q_home = np.asarray(q_home, dtype=np.float64).copy()
        self.ws_min = np.asarray(cfg.workspace_min, dtype=np.float64)
        self.ws_max = np.asarray(cfg.workspace_max, dtype=np.float64)
        self.tau_max = np.asarray(cfg.torque_limits, dtype=np.float64)
        self.kp = np.array([cfg.pos_stiffness] * 3 + [cfg.rot_stiffness] * 3)
        self.kd = 2.0 * cfg.damping_ratio * np.sqrt(self.kp)
        self.kp_null = cfg.null_stiffness
        self.kd_null = 2.0 * np.sqrt(cfg.null_stiffness)
        # Target: position (3,) and MuJoCo-order quaternion (w, x, y, z).
        self.target_pos = np.zeros(3)
        self.target_quat_mj = np.array([1.0, 0.0, 0.0, 0.0])
        # Scratch buffers: allocated once, the loop runs every physics step (1 kHz by default).
        nv = model.nv
        self._jacp = np.zeros((3, nv))
        self._jacr = np.zeros((3, nv))
        self._unit = np.zeros((len(self.dof), nv))
        self._unit[np.arange(len(self.dof)), self.dof] = 1.0
        self._minv_rows = np.zeros((len(self.dof), nv))
        self._q_site = np.zeros(4)
        self._q_err = np.zeros(4)
        self._q_conj = np.zeros(4)
        self._rot_err = np.zeros(3)

    def clamp(self, position: np.ndarray) -> np.ndarray:
        """Clamp a target position into the workspace box."""
        return np.clip(position, self.ws_min, self.ws_max)

    def set_target(self, pose7: np.ndarray) -> np.ndarray:
        """Set the TCP target (x, y, z, qx, qy, qz, qw) in the base frame.

        Returns:
            The pose actually used: position clamped to the workspace, unit quaternion.

        Raises:
            ValueError: for a wrong shape, NaN/inf entries or a zero-norm quaternion.
        """
        pose = np.asarray(pose7, dtype=np.float64)
        if pose.shape != (7,):
            raise ValueError(f"target pose has shape {pose.shape}: expected (7,) = x y z qx qy qz qw")
        if not np.all(np.isfinite(pose)):
            raise ValueError(f"target pose {pose.tolist()} has NaN/inf entries: expected finite values")
        quat = quat_normalize(pose[3:])  # raises ValueError on a zero-norm quaternion
        pos = self.clamp(pose[:3])
        self.target_pos = pos
        self.target_quat_mj = quat_to_mj(quat)
        return np.concatenate([pos, quat])

    def compute(self, data: mujoco.MjData) -> np.ndarray:
        """Arm torques (7,) for the current state; needs kinematics from the last mj_step/forward."""
        m = self.model
        mujoco.mj_jacSite(m, data, self._jacp, self._jacr, self.site_id)
        jac = np.vstack([self._jacp[:, self.dof], self._jacr[:, self.dof]])  # (6, 7)

        # Pose error: position and rotation vector of target * current^-1 (world frame).
        pos_err = self.target_pos - data.site_xpos[self.site_id]
        norm = np.linalg.norm(pos_err)
        if norm > self.cfg.max_pos_error:
            pos_err *= self.cfg.max_pos_error / norm
        mujoco.mju_mat2Quat(self._q_site, data.site_xmat[self.site_id])
        mujoco.mju_negQuat(self._q_conj, self._q_site)
        mujoco.mju_mulQuat(self._q_err, self.target_quat_mj, self._q_conj)
        if self._q_err[0] < 0:  # shortest way round
            self._q_err *= -1.0
        mujoco.mju_quat2Vel(self._rot_err, self._q_err, 1.0)
        angle = np.linalg.norm(self._rot_err)
        if angle > self.cfg.max_rot_error:
            self._rot_err *= self.cfg.max_rot_error / angle
        err = np.concatenate([pos_err, self._rot_err])

        dq = data.qvel[self.dof]
        vel = jac @ dq
        # Arm block of M^-1 (exact, including the coupling to the fingers' inertia).
        mujoco.mj_solveM(m, data, self._minv_rows, self._unit)
        minv = self._minv_rows[:, self.dof]
        lam_inv = jac @ minv @ jac.T
        # Damped inverse: near singularities Lambda would blow up.
        lam = np.linalg.inv(lam_inv + 1e-4 * np.eye(6))
        wrench = lam @ (self.kp * err - self.kd * vel)
        tau = jac.T @ wrench

        # Null-space posture: dynamically consistent projection, so it does not disturb the TCP.
        jbar = minv @ jac.T @ lam  # (7, 6)
        null_proj = np.eye(len(self.dof)) - jac.T @ jbar.T
        q = data.qpos[self.qadr]
        mass = np.linalg.inv(minv)
        tau_null = mass @ (self.kp_null * (self.q_home - q) - self.kd_null * dq)
        tau += null_proj @ tau_null

        tau += data.qfrc_bias[self.dof]  # gravity + Coriolis compensation
        return np.clip(tau, -self.tau_max, self.tau_max)

    def apply(self, data: mujoco.MjData) -> None:
        """Compute the torques and write them into the arm motors' ``ctrl``."""
        data.ctrl[self.act] = self.compute(data)
