"""Scripted experts: waypoint state machines that act like a teleoperator.

An expert sees only what a teleoperator sees (time, TCP pose, gripper width, object poses) and
returns a TCP target pose and a gripper width command; it never touches MuJoCo state. The
commanded target moves towards the current waypoint at a bounded speed (0.25 m/s, 1.5 rad/s by
default), so it is streamed incrementally like a teleop device would, never as a jump.

Usage::

    expert = make_expert("push")
    expert.reset()
    while not expert.done:
        pose, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
        sim.set_target(pose); sim.set_gripper(width); sim.step(10)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avdp_ros.geometry import quat_angle, quat_mul, quat_to_matrix, slerp
from avdp_ros.sim.tasks import CUBE_HALF

# TCP pointing down, fingers opening along the base y axis (the home orientation).
Q_DOWN = np.array([1.0, 0.0, 0.0, 0.0])


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(0.5 * yaw), np.cos(0.5 * yaw)])


def down_pose(pos, yaw: float = 0.0) -> np.ndarray:
    """Pose with the gripper pointing down, turned by `yaw` about the base z axis."""
    return np.concatenate([np.asarray(pos, float), quat_mul(_yaw_quat(yaw), Q_DOWN)])


def body_yaw(quat_xyzw: np.ndarray) -> float:
    """Yaw (rad) of a body's x axis about the base z axis."""
    rot = quat_to_matrix(quat_xyzw)
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def wrap(angle: float, period: float) -> float:
    """Wrap into [-period/2, period/2) (the gripper is symmetric, so yaw has period pi)."""
    return float((angle + period / 2) % period - period / 2)


@dataclass
class ExpertConfig:
    # Largest speed of the streamed target (m/s).
    max_speed: float = 0.25
    # Largest angular speed of the streamed target (rad/s).
    max_angular_speed: float = 1.5
    # Slower speed (m/s) while in contact (pushing, descending onto an object).
    contact_speed: float = 0.10
    # TCP-to-waypoint distance (m) and angle (rad) that count as "reached".
    pos_tolerance: float = 0.012
    rot_tolerance: float = 0.08
    # Give up waiting for a waypoint after this long (s) and move on (contacts can block it).
    phase_timeout: float = 4.0


class Expert:
    """Base: a phase machine that streams a speed-limited target towards each phase's waypoint."""

    def __init__(self, cfg: ExpertConfig | None = None):
        self.cfg = cfg or ExpertConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the episode: the next act() starts from the current TCP pose."""
        self.phase = 0
        self.phase_start = None
        self.cmd: np.ndarray | None = None  # streamed target (7,)
        self.width = 0.0
        self.t_last = None
        self.retries = 0
        self._done = False

    @property
    def done(self) -> bool:
        """True once the task has been carried out and the gripper has backed off."""
        return self._done

    # Subclasses: return (waypoint pose7, gripper width, speed, advance?) for the current phase.
    def plan(self, t: float, ee: np.ndarray, width: float, objects: dict) -> tuple:
        raise NotImplementedError

    def goto(self, phase: int, t: float) -> None:
        self.phase = phase
        self.phase_start = t

    def act(self, t: float, ee_pose: np.ndarray, gripper_width: float,
            object_poses: dict) -> tuple[np.ndarray, float]:
        """One teleop tick.

        Args:
            t: time (s) since the episode started.
            ee_pose: (7,) current TCP pose (base frame).
            gripper_width: current finger opening (m).
            object_poses: name -> (7,) pose (base frame).

        Returns:
            (target pose (7,), gripper width command in metres).
        """
        ee = np.asarray(ee_pose, dtype=np.float64)
        if self.cmd is None:
            self.cmd = ee.copy()
            self.t_last = t
            self.phase_start = t
        dt = max(0.0, t - self.t_last)
        self.t_last = t
        if not self._done:
            waypoint, self.width, speed = self.plan(t, ee, gripper_width, object_poses)
            self._stream(waypoint, speed, dt)
        return self.cmd.copy(), self.width

    def resync(self, t: float, ee: np.ndarray, width: float, objects: dict) -> None:
        """Label mode (DAgger): put the phase machine in the phase the *state* is in.

        Driving itself, the expert passes each phase's checkpoint before the next phase starts.
        Another driver (a policy) skips checkpoints: it descends without stopping above the
        cube, or has the cube in hand while the expert still waits to reach the point above it.
        Without this, the labels would follow the expert's stale phase ("open and descend" with
        the cube in hand) instead of what the expert would do from the state the policy reached.
        Subclasses jump forward where the state shows a later phase and back where it shows the
        task undone; the expert's own trajectories never trigger a jump (tested).
        """

    def leash(self, ee_pose: np.ndarray, max_lead: float) -> None:
        """Pull the streamed target to within `max_lead` (m) of the measured TCP position.

        For labelling another driver's run (DAgger): the stream otherwise runs on towards the
        waypoint whatever the robot does, and its label would say "be 10 cm over there" where
        the expert itself, driving, would have led the TCP by its tracking lag (~2 cm).
        """
        if self.cmd is None:
            return
        lead = self.cmd[:3] - np.asarray(ee_pose[:3], dtype=np.float64)
        dist = float(np.linalg.norm(lead))
        if dist > max_lead:
            self.cmd[:3] = ee_pose[:3] + lead * (max_lead / dist)

    def _stream(self, waypoint: np.ndarray, speed: float, dt: float) -> None:
        """Move the streamed target towards `waypoint` by at most speed*dt (and the angular cap)."""
        delta = waypoint[:3] - self.cmd[:3]
        dist = np.linalg.norm(delta)
        step = speed * dt
        self.cmd[:3] = waypoint[:3] if dist <= step else self.cmd[:3] + delta * (step / dist)
        angle = float(quat_angle(self.cmd[3:], waypoint[3:]))
        max_rot = self.cfg.max_angular_speed * dt
        frac = 1.0 if angle <= max_rot else max_rot / angle
        self.cmd[3:] = slerp(self.cmd[3:], waypoint[3:], frac)

    def reached(self, ee: np.ndarray, waypoint: np.ndarray, tol: float | None = None) -> bool:
        """Streamed target at the waypoint and the TCP close to it."""
        tol = self.cfg.pos_tolerance if tol is None else tol
        return (
            np.linalg.norm(self.cmd[:3] - waypoint[:3]) < 1e-6
            and np.linalg.norm(ee[:3] - waypoint[:3]) < tol
            and float(quat_angle(ee[3:], waypoint[3:])) < self.cfg.rot_tolerance
        )

    def elapsed(self, t: float) -> float:
        return t - self.phase_start


class PushExpert(Expert):
    """Closed gripper behind the cube, push it along the cube->target line, back off.

    The pushing direction is recomputed from the cube's current position every tick, and the
    expert re-approaches from behind if the cube slides off the finger line.
    """

    travel_z = 0.10  # TCP height (m) when moving over the table
    push_z = 0.022  # TCP height while pushing (fingertips ~5 mm above the table)
    finger_reach = 0.024  # TCP-to-front of the closed fingers along the push direction (m)
    clearance = 0.035  # gap (m) between fingers and cube before the push starts
    press = 0.03  # how far (m) the target leads into the cube, for a steady contact force
    goal_tolerance = 0.012  # stop pushing when the cube centre is this close (m) to the target
    max_lateral = 0.02  # re-approach when the cube is this far (m) off the finger line

    def reset(self) -> None:
        super().reset()
        self.u = np.array([1.0, 0.0])  # push direction in the table plane

    def resync(self, t, ee, width, objects):
        if self.cmd is None or self._done or self.phase != 0:
            return  # 1 reaches its point behind the cube; 2 re-approaches by itself when the cube is lost
        cube = np.asarray(objects["cube"][:3], float)
        goal = np.asarray(objects["target"][:3], float)
        to_goal = goal[:2] - cube[:2]
        if np.linalg.norm(to_goal) < self.goal_tolerance:
            return
        u = to_goal / np.linalg.norm(to_goal)
        rel = cube[:2] - ee[:2]
        lateral = abs(rel[0] * u[1] - rel[1] * u[0])
        along = float(rel @ u)
        low = ee[2] < self.push_z + 0.01
        behind = CUBE_HALF + self.finger_reach - 0.005 < along < CUBE_HALF + self.finger_reach + self.clearance + 0.01
        if low and behind and lateral < self.max_lateral / 2:
            self.goto(2, t)  # already at pushing height behind the cube, in line: push
        elif low:
            self.goto(4, t)  # low but not behind the cube: lift first, do not sweep through it

    def plan(self, t, ee, width, objects):
        cube = np.asarray(objects["cube"][:3], float)
        goal = np.asarray(objects["target"][:3], float)
        to_goal = goal[:2] - cube[:2]
        dist = np.linalg.norm(to_goal)
        if self.phase < 3 and dist > 1e-6:
            self.u = to_goal / dist  # push direction, frozen once the push is over
        u = self.u
        # Fingers in line with the push direction: the wrist camera (mounted across the finger
        # axis) then looks at the cube from the side instead of from behind the fingers.
        yaw = wrap(float(np.arctan2(u[1], u[0])) - np.pi / 2, np.pi)
        behind = cube[:2] - u * (CUBE_HALF + self.finger_reach + self.clearance)
        c = self.cfg
        if self.phase == 0:  # above the pre-push point
            wp = down_pose([*behind, self.travel_z], yaw)
            if self.reached(ee, wp, 0.02):
                self.goto(1, t)
            return wp, 0.0, c.max_speed
        if self.phase == 1:  # down to pushing height, behind the cube
            wp = down_pose([*behind, self.push_z], yaw)
            if self.reached(ee, wp) or self.elapsed(t) > c.phase_timeout:
                self.goto(2, t)
            return wp, 0.0, c.contact_speed
        if self.phase == 2:  # push, keeping the fingers on the cube->goal line
            if dist < self.goal_tolerance:
                self.goto(3, t)
            rel = cube[:2] - ee[:2]
            lateral = abs(rel[0] * u[1] - rel[1] * u[0])
            along = float(rel @ u)
            if (lateral > self.max_lateral or along < 0.0) and self.retries < 5:
                self.retries += 1
                self.goto(4, t)  # lost the cube: lift and come round again
            contact = cube[:2] - u * (CUBE_HALF + self.finger_reach - self.press)
            return down_pose([*contact, self.push_z], yaw), 0.0, c.contact_speed
        if self.phase == 3:  # back off and lift
            wp = down_pose([*(cube[:2] - u * 0.08), self.travel_z], yaw)
            if self.reached(ee, wp, 0.02):
                self._done = True
            return wp, 0.0, c.max_speed
        # phase 4: retreat upward, then approach again
        wp = self.cmd.copy()
        wp[2] = self.travel_z
        if ee[2] > self.travel_z - 0.02:
            self.goto(0, t)
        return wp, 0.0, c.max_speed


class PickPlaceExpert(Expert):
    """Open, descend over the cube aligned with its faces, close, lift, carry over the bin, open."""

    travel_z = 0.16  # TCP height (m) when carrying (cube bottom well above the bin walls)
    grasp_z = 0.028  # TCP height (m) at the grasp (fingertips ~1 cm above the table)
    release_z = 0.085  # TCP height (m) when letting go inside the bin
    open_width = 0.08
    grasp_time = 0.6  # s to wait for the fingers to close
    release_time = 0.4  # s to wait for the fingers to open
    min_hold_width = 0.03  # a closed gripper narrower than this (m) has missed the cube
    bin_release_margin = 0.04  # cube within this (m, per axis) of the bin's centre: release here

    def reset(self) -> None:
        super().reset()
        self.yaw = 0.0

    def resync(self, t, ee, width, objects):
        if self.cmd is None:
            return
        cube = np.asarray(objects["cube"][:3], float)
        near = float(np.linalg.norm(cube[:2] - ee[:2]))
        held = width > self.min_hold_width and cube[2] > CUBE_HALF + 0.015 and near < 0.03
        bin_xy = np.asarray(objects["bin"][:2], float)
        over_bin = bool(np.all(np.abs(cube[:2] - bin_xy) < self.bin_release_margin))
        if held and (self._done or self.phase == 7):
            # The expert opened (phase 6) but the driver did not, and still holds the cube: the
            # task is not done. Without this the labels say "up and away" with the cube in hand.
            self._done = False
            self.goto(5 if over_bin else 4, t)  # lower into the bin and open there / carry over it first
            return
        if held and over_bin and self.phase in (3, 4) and ee[2] < self.travel_z - 0.03:
            # Already over the bin and below the carrying height (the driver cut the corner):
            # lower and open here. Phase 4 would say "up to the carrying height first", and a
            # policy trained on that bobs over the bin without ever letting go.
            self.goto(5, t)
            return
        if self._done:
            return
        if held and self.phase in (0, 1, 2):
            self.goto(3, t)  # the cube is already in hand and off the table: lift and carry
        elif not held and self.phase in (4, 5) and cube[2] < CUBE_HALF + 0.01:
            self.retries += 1
            self.goto(0, t)  # dropped on the table on the way: open and pick it up again
        elif self.phase == 0 and near < 0.01 and ee[2] < 0.11:
            yaw = wrap(body_yaw(objects["cube"][3:]), np.pi / 2)
            if float(quat_angle(ee[3:], down_pose(cube, yaw)[3:])) < self.cfg.rot_tolerance:
                self.yaw = yaw
                self.goto(1, t)  # over the cube, square to it, already below the approach height: descend

    def plan(self, t, ee, width, objects):
        cube = np.asarray(objects["cube"][:3], float)
        bin_pos = np.asarray(objects["bin"][:3], float)
        c = self.cfg
        if self.phase == 0:  # above the cube, fingers square to its faces
            self.yaw = wrap(body_yaw(objects["cube"][3:]), np.pi / 2)
            wp = down_pose([cube[0], cube[1], 0.12], self.yaw)
            if self.reached(ee, wp, 0.01):
                self.goto(1, t)
            return wp, self.open_width, c.max_speed
        if self.phase == 1:  # descend
            wp = down_pose([cube[0], cube[1], self.grasp_z], self.yaw)
            if self.reached(ee, wp, 0.008) or self.elapsed(t) > c.phase_timeout:
                self.goto(2, t)
            return wp, self.open_width, c.contact_speed * 1.5
        if self.phase == 2:  # close
            wp = self.cmd.copy()
            if self.elapsed(t) > self.grasp_time:
                self.goto(3, t)
            return wp, 0.0, c.max_speed
        if self.phase == 3:  # lift
            wp = self.cmd.copy()
            wp[2] = self.travel_z
            if width < self.min_hold_width and self.retries < 3:  # missed: open and retry
                self.retries += 1
                self.goto(0, t)
                return wp, self.open_width, c.max_speed
            if self.reached(ee, wp, 0.02):
                self.goto(4, t)
            return wp, 0.0, c.max_speed
        if self.phase == 4:  # carry over the bin
            wp = down_pose([bin_pos[0], bin_pos[1], self.travel_z], self.yaw)
            if self.reached(ee, wp, 0.01):
                self.goto(5, t)
            return wp, 0.0, c.max_speed
        if self.phase == 5:  # lower into the bin
            wp = down_pose([bin_pos[0], bin_pos[1], self.release_z], self.yaw)
            if self.reached(ee, wp, 0.01) or self.elapsed(t) > c.phase_timeout:
                self.goto(6, t)
            return wp, 0.0, c.max_speed
        if self.phase == 6:  # open
            wp = self.cmd.copy()
            if self.elapsed(t) > self.release_time:
                self.goto(7, t)
            return wp, self.open_width, c.max_speed
        # phase 7: up and away
        wp = self.cmd.copy()
        wp[2] = self.travel_z
        if ee[2] > self.travel_z - 0.03:
            self._done = True
        return wp, self.open_width, c.max_speed


@dataclass
class PerturbConfig:
    """DART-style perturbations (Laskey et al. 2017) of the target the expert *executes*.

    The label of a recording stays the expert's intended target (published separately), so the
    data shows the arm off the expert's path together with the command that leads back: the
    recovery behaviour a cloned policy needs once its own errors push it off that path.
    A perturbation is a smooth bump (sin^2 envelope) of a random horizontal-heavy offset; bumps
    alternate with quiet gaps so the expert still reaches its waypoints and finishes the task.
    """

    pos_amplitude: float = 0.0  # peak offset (m) of the largest bump; 0 switches perturbations off
    yaw_amplitude: float = 0.0  # peak yaw offset (rad) about the base z axis
    duration: tuple[float, float] = (0.4, 1.0)  # bump length range (s)
    gap: tuple[float, float] = (0.3, 1.5)  # quiet time range (s) between bumps
    z_scale: float = 0.3  # vertical share of a bump (pressing into the table teaches nothing)

    def __post_init__(self) -> None:
        if not (0.0 <= self.pos_amplitude <= 0.1 and 0.0 <= self.yaw_amplitude <= 0.5):
            raise ValueError(f"PerturbConfig: pos_amplitude {self.pos_amplitude} m, yaw_amplitude "
                             f"{self.yaw_amplitude} rad: expected 0..0.1 m and 0..0.5 rad")
        for name in ("duration", "gap"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"PerturbConfig.{name} = {(lo, hi)}: expected 0 < low <= high (s)")

    @property
    def enabled(self) -> bool:
        return self.pos_amplitude > 0 or self.yaw_amplitude > 0


class TargetPerturbation:
    """Offsets added to an expert's target as a function of episode time (deterministic per seed)."""

    def __init__(self, cfg: PerturbConfig, seed: int = 0):
        self.cfg = cfg
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._start = self.rng.uniform(0.0, self.cfg.gap[1])  # the first bump may hit the start
        self._new_bump()

    def _new_bump(self) -> None:
        c = self.cfg
        self._length = self.rng.uniform(*c.duration)
        d = self.rng.normal(size=3) * np.array([1.0, 1.0, c.z_scale])
        self._offset = d / max(np.linalg.norm(d), 1e-9) * c.pos_amplitude * self.rng.uniform(0.3, 1.0)
        self._yaw = c.yaw_amplitude * self.rng.uniform(-1.0, 1.0)

    def offset(self, t: float) -> tuple[np.ndarray, float]:
        """(position offset (3,) m, yaw offset rad) at episode time t; call with t non-decreasing."""
        while t > self._start + self._length:  # bump over: quiet gap, then the next one
            self._start += self._length + self.rng.uniform(*self.cfg.gap)
            self._new_bump()
        u = (t - self._start) / self._length
        if u < 0.0:
            return np.zeros(3), 0.0
        w = float(np.sin(np.pi * u) ** 2)
        return w * self._offset, w * self._yaw

    def apply(self, target: np.ndarray, t: float) -> np.ndarray:
        """`target` (7,) with the offset at time t (position added, yaw turned about base z)."""
        if not self.cfg.enabled:
            return np.asarray(target, dtype=np.float64).copy()
        dp, dyaw = self.offset(t)
        out = np.asarray(target, dtype=np.float64).copy()
        out[:3] += dp
        out[3:] = quat_mul(_yaw_quat(dyaw), out[3:])
        return out


EXPERTS = {"push": PushExpert, "pick_place": PickPlaceExpert}


def make_expert(task_name: str, cfg: ExpertConfig | None = None) -> Expert:
    """Scripted expert for a task in ``tasks.TASKS``."""
    if task_name not in EXPERTS:
        raise ValueError(f"no expert for task {task_name!r}: expected one of {sorted(EXPERTS)}")
    return EXPERTS[task_name](cfg)


def run_episode(sim, expert: Expert, seed: int, control_hz: float = 50.0,
                time_limit: float | None = None, settle: float = 0.5,
                perturb: TargetPerturbation | None = None) -> dict:
    """Roll out `expert` in a PandaSim (no ROS). Teleop rate `control_hz`, physics every step;
    `perturb` offsets the executed targets (reset with the episode seed).

    Returns:
        {"success", "duration" (sim s until done, or the time limit), "done"}.
    """
    info = sim.reset(seed)
    expert.reset()
    if perturb is not None:
        perturb.reset(seed)
    limit = sim.cfg.episode_time_limit if time_limit is None else time_limit
    substeps = max(1, int(round(1.0 / (control_hz * sim.physics_dt))))
    while sim.time < limit and not expert.done:
        pose, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
        sim.set_target(pose if perturb is None else perturb.apply(pose, sim.time))
        sim.set_gripper(width)
        sim.step(substeps)
    duration = sim.time
    # Let the scene come to rest before judging (the cube may still be sliding or falling).
    sim.step(int(round(settle / sim.physics_dt)))
    return {"success": sim.success(), "duration": duration, "done": expert.done, "task": info["task"]}
