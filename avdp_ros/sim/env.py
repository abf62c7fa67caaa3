"""Public simulation API used by the ROS bridge and by the no-ROS evaluator.

``PandaSim`` owns one MjModel/MjData pair: a torque-controlled Panda (operational-space
controller running every physics step), a table with the task's objects, and two cameras.
All poses are in the base frame ``panda_link0`` (== MuJoCo world), quaternions (x, y, z, w).

Threading: ``step``/``set_target``/``reset`` and the state getters take an internal lock, so a
ROS node may render from a camera thread while a control thread steps physics. Renderers hold
an OpenGL context, which belongs to the thread that created it, so one renderer is created
lazily per calling thread.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import mujoco
import numpy as np

from avdp_ros.geometry import quat_from_mj
from avdp_ros.sim import appearance, scene
from avdp_ros.sim.controller import ControllerConfig, OperationalSpaceController
from avdp_ros.sim.tasks import TASKS, make_task

log = logging.getLogger(__name__)

BASE_FRAME = "panda_link0"  # ROS frame id of the base (== MuJoCo world)
# Home posture: TCP at about (0.45, 0, 0.30), pointing down, fingers opening along the base y axis.
HOME_QPOS = np.array([0.0, -0.30, 0.0, -2.38, 0.0, 0.51, 0.0])
GRIPPER_MAX = 2 * scene.FINGER_MAX  # total finger opening (m)


@dataclass
class SimConfig:
    # Task name, a key of tasks.TASKS.
    task: str = "push"
    # Camera image size in pixels (both cameras).
    image_width: int = 128
    image_height: int = 128
    # Physics time step (s); the controller runs every step, so 0.001 s = 1 kHz, the Franka's
    # own impedance-control rate; it also puts 200 Hz pose feedback on an exact 5 ms grid.
    physics_dt: float = 0.001
    # Cameras that may be rendered (a subset of scene.CAMERAS).
    cameras: tuple[str, ...] = ("camera", "wrist")
    # Workspace box (m, base frame) that TCP targets are clamped into; z = 0 is the table top.
    workspace_min: tuple[float, float, float] = (0.25, -0.40, 0.015)
    workspace_max: tuple[float, float, float] = (0.75, 0.40, 0.50)
    # Sim time (s) after which an episode is cut; the scripted experts need < 12 s.
    episode_time_limit: float = 15.0
    # Scene look per episode: a distribution of sim/appearance.py ("nominal" = the one fixed look),
    # drawn from the episode seed at each reset.
    appearance: str = "nominal"
    # Controller acceleration gains (1/s^2), see controller.py.
    pos_stiffness: float = 400.0
    rot_stiffness: float = 400.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"SimConfig.task = {self.task!r}: expected one of {sorted(TASKS)}")
        for name in ("image_width", "image_height"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or not 8 <= value <= 4096:
                raise ValueError(f"SimConfig.{name} = {value!r}: expected an integer in 8..4096")
        if not (math.isfinite(self.physics_dt) and 0 < self.physics_dt <= 0.002):
            raise ValueError(
                f"SimConfig.physics_dt = {self.physics_dt!r}: expected 0 < dt <= 0.002 s "
                "(the controller runs every step and must run at >= 500 Hz)"
            )
        self.cameras = tuple(self.cameras)
        unknown = [c for c in self.cameras if c not in scene.CAMERAS]
        if unknown or not self.cameras:
            raise ValueError(f"SimConfig.cameras = {self.cameras}: expected a non-empty subset of {scene.CAMERAS}")
        if not (math.isfinite(self.episode_time_limit) and self.episode_time_limit > 0):
            raise ValueError(f"SimConfig.episode_time_limit = {self.episode_time_limit!r}: expected > 0 s")
        if self.appearance not in appearance.DISTRIBUTIONS:
            raise ValueError(f"SimConfig.appearance = {self.appearance!r}: expected one of "
                             f"{', '.join(appearance.DISTRIBUTIONS)}")
        # Workspace and gains are validated by ControllerConfig (raises ValueError).
        self.controller_config()

    def controller_config(self) -> ControllerConfig:
        return ControllerConfig(
            pos_stiffness=self.pos_stiffness, rot_stiffness=self.rot_stiffness,
            workspace_min=tuple(self.workspace_min), workspace_max=tuple(self.workspace_max),
        )


def _release_gl_context() -> None:
    """Un-bind this thread's EGL context after a render.

    An EGL context may be current in one thread only; left bound, a renderer created in a camera
    thread could not be closed (or garbage-collected) from another thread (EGL_BAD_ACCESS).
    Renderer.render() makes its context current again on every call, so this costs nothing else.
    """
    if os.environ.get("MUJOCO_GL", "").lower() != "egl":
        return
    import mujoco.egl as mj_egl

    if mj_egl.EGL_DISPLAY is not None:
        egl = mj_egl.EGL
        egl.eglMakeCurrent(mj_egl.EGL_DISPLAY, egl.EGL_NO_SURFACE, egl.EGL_NO_SURFACE, egl.EGL_NO_CONTEXT)


class PandaSim:
    """Panda + table + task objects, torque-controlled towards a Cartesian target pose."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.task = make_task(cfg.task)
        self.model = scene.build_model(
            self.task.add_objects, physics_dt=cfg.physics_dt,
            offscreen_size=(cfg.image_width, cfg.image_height),
        )
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._look = appearance.handles(m)
        self.appearance = appearance.Appearance()
        self._controller = OperationalSpaceController(
            m, cfg.controller_config(), scene.EE_SITE, scene.ARM_JOINTS, scene.ARM_ACTUATORS, HOME_QPOS
        )
        self._site = m.site(scene.EE_SITE).id
        self._arm_qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.ARM_JOINTS])
        self._arm_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in scene.ARM_JOINTS])
        self._finger_qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._finger_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._finger_act = np.array([m.actuator(a).id for a in scene.FINGER_ACTUATORS])
        self._lock = threading.RLock()
        self._local = threading.local()  # per-thread renderer
        self._renderers: list[mujoco.Renderer] = []  # all of them, for close()
        self._seed: int | None = None
        self._t0 = 0.0
        self._gripper_cmd = 0.0
        self._closed = False
        self._scratch: mujoco.MjData | None = None  # physics of a what-if branch()
        self._twin: tuple | None = None  # (model, data, renderer) of render_nominal, built on first use
        self.reset(0)

    # -- episode --------------------------------------------------------------------------------
    def reset(self, seed: int, look: appearance.Appearance | None = None) -> dict:
        """Start an episode: arm at home, target = home pose, objects placed from `seed`, the scene
        drawn from `cfg.appearance` by `seed` (or `look`: re-render a recorded episode exactly).

        Returns:
            {"task", "seed", "instruction", "object_names", "appearance": {"name", "params"}}.
        """
        seed = int(seed)
        name = self.cfg.appearance if look is None else "given"
        look = appearance.draw(self.cfg.appearance, seed) if look is None else look
        with self._lock:
            m, d = self.model, self.data
            appearance.apply(m, self._look, look)
            self.appearance = look
            mujoco.mj_resetData(m, d)
            d.qpos[self._arm_qadr] = HOME_QPOS
            width = self.task.initial_gripper
            d.qpos[self._finger_qadr] = width / 2
            self.task.reset(m, d, np.random.default_rng(seed))
            mujoco.mj_forward(m, d)
            self._controller.set_target(self._ee_pose())
            self.set_gripper(width)
            self._seed = seed
            self._t0 = d.time
        return {
            "task": self.task.name,
            "seed": seed,
            "instruction": self.task.instruction,
            "object_names": list(self.task.object_names),
            "appearance": {"name": name, "params": look.to_dict()},
        }

    @property
    def time(self) -> float:
        """Sim time (s) since the last reset."""
        return float(self.data.time - self._t0)

    @property
    def physics_dt(self) -> float:
        return float(self.model.opt.timestep)

    @property
    def instruction(self) -> str:
        return self.task.instruction

    def step(self, n: int = 1) -> None:
        """Advance `n` physics steps; the controller computes fresh torques before each."""
        if n < 0:
            raise ValueError(f"step(n={n}): expected n >= 0")
        m, d, ctrl = self.model, self.data, self._controller
        with self._lock:
            for _ in range(int(n)):
                ctrl.apply(d)
                mujoco.mj_step(m, d)

    @contextmanager
    def branch(self):
        """A what-if from the current state (DAgger: "what would the expert do from here?").

        Inside, commands, stepping and state reads act on a copy of the physics; on exit the sim
        is exactly as before: the episode's own MjData is never touched, so it continues
        bit-for-bit as if no branch had run. Holds the sim lock throughout (no rendering inside).
        """
        with self._lock:
            main, ctrl = self.data, self._controller
            saved = (ctrl.target_pos.copy(), ctrl.target_quat_mj.copy(), self._gripper_cmd)
            if self._scratch is None:
                self._scratch = mujoco.MjData(self.model)
            mujoco.mj_copyData(self._scratch, self.model, main)
            self.data = self._scratch
            try:
                yield self
            finally:
                self.data = main
                ctrl.target_pos, ctrl.target_quat_mj, self._gripper_cmd = saved

    # -- commands -------------------------------------------------------------------------------
    def set_target(self, pose7: np.ndarray) -> np.ndarray:
        """Set the TCP target pose (x, y, z, qx, qy, qz, qw), base frame.

        Returns:
            The target actually used (position clamped to the workspace, unit quaternion).

        Raises:
            ValueError: wrong shape, NaN/inf, or a zero-norm quaternion.
        """
        with self._lock:
            return self._controller.set_target(pose7)

    def target(self) -> np.ndarray:
        """The current controller target (7,)."""
        with self._lock:
            c = self._controller
            return np.concatenate([c.target_pos, quat_from_mj(c.target_quat_mj)])

    def set_gripper(self, width: float) -> float:
        """Command the total finger opening (m), clamped to 0..0.08. Returns the width used."""
        width = float(width)
        if not math.isfinite(width):
            raise ValueError(f"gripper width {width!r}: expected a finite value in 0..{GRIPPER_MAX}")
        width = min(max(width, 0.0), GRIPPER_MAX)
        with self._lock:
            self.data.ctrl[self._finger_act] = width / 2
            self._gripper_cmd = width
        return width

    # -- state ----------------------------------------------------------------------------------
    def _ee_pose(self) -> np.ndarray:
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._site])
        return np.concatenate([self.data.site_xpos[self._site], quat_from_mj(quat)])

    def ee_pose(self) -> np.ndarray:
        """(7,) TCP pose in the base frame."""
        with self._lock:
            return self._ee_pose()

    def ee_velocity(self) -> np.ndarray:
        """(6,) TCP twist in the base frame: linear (m/s), angular (rad/s)."""
        vel = np.zeros(6)
        with self._lock:
            mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self._site, vel, 0)
        return np.concatenate([vel[3:], vel[:3]])  # MuJoCo gives (angular, linear)

    def gripper_width(self) -> float:
        """Total finger opening (m)."""
        with self._lock:
            return float(np.sum(self.data.qpos[self._finger_qadr]))

    def gripper_command(self) -> float:
        return self._gripper_cmd

    def finger_positions(self) -> np.ndarray:
        with self._lock:
            return self.data.qpos[self._finger_qadr].copy()

    def finger_velocities(self) -> np.ndarray:
        with self._lock:
            return self.data.qvel[self._finger_dof].copy()

    def joint_positions(self) -> np.ndarray:
        with self._lock:
            return self.data.qpos[self._arm_qadr].copy()

    def joint_velocities(self) -> np.ndarray:
        with self._lock:
            return self.data.qvel[self._arm_dof].copy()

    def joint_torques(self) -> np.ndarray:
        """(7,) last commanded arm torques (Nm)."""
        with self._lock:
            return self.data.ctrl[self._controller.act].copy()

    def object_poses(self) -> dict[str, np.ndarray]:
        """name -> (7,) pose, in the order of reset()'s "object_names"."""
        with self._lock:
            return {n: self.task.body_pose(self.model, self.data, n) for n in self.task.object_names}

    def success(self) -> bool:
        with self._lock:
            return self.task.success(self.model, self.data)

    def goal_distance(self) -> float:
        """Table-plane distance (m) from the cube to the goal marker (see Task.goal_distance)."""
        with self._lock:
            return self.task.goal_distance(self.model, self.data)

    # -- cameras --------------------------------------------------------------------------------
    def _renderer(self) -> mujoco.Renderer:
        renderer = getattr(self._local, "renderer", None)
        if renderer is None:
            renderer = mujoco.Renderer(self.model, self.cfg.image_height, self.cfg.image_width)
            # Fast path (two cameras at 30 Hz on a CPU): no shadows, no reflections.
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._local.renderer = renderer
            with self._lock:
                self._renderers.append(renderer)
        return renderer

    def _check_camera(self, camera: str) -> None:
        if camera not in self.cfg.cameras:
            raise ValueError(f"unknown camera {camera!r}: expected one of {self.cfg.cameras}")

    def render(self, camera: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB image from `camera`."""
        self._check_camera(camera)
        if self._closed:
            raise RuntimeError("PandaSim.render() after close()")
        renderer = self._renderer()
        with self._lock:  # snapshot the state into the renderer's scene, then draw unlocked
            renderer.update_scene(self.data, camera=camera)
        image = renderer.render()
        _release_gl_context()
        return image

    def render_nominal(self, camera: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of the current state as the nominal scene shows it, whatever
        this episode's appearance: the paired target of an appearance-invariant tokenizer
        (`avdp-train-tokenizer --target-look nominal`). Rendered from a twin model that keeps the
        nominal look (distractors hidden, nominal camera pose), with this episode's joint and object
        poses copied in; the episode's own model and physics are not touched. Single-threaded
        callers only (in-process recording), unlike `render`."""
        self._check_camera(camera)
        if self._closed:
            raise RuntimeError("PandaSim.render_nominal() after close()")
        if self._twin is None:
            m = scene.build_model(self.task.add_objects, physics_dt=self.cfg.physics_dt,
                                  offscreen_size=(self.cfg.image_width, self.cfg.image_height))
            appearance.apply(m, appearance.handles(m), appearance.Appearance())
            renderer = mujoco.Renderer(m, self.cfg.image_height, self.cfg.image_width)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._twin = (m, mujoco.MjData(m), renderer)
            with self._lock:
                self._renderers.append(renderer)
        m, d, renderer = self._twin
        with self._lock:
            # The whole state, derived poses included: after mj_step they lag qpos by one physics step,
            # and `render` draws them so; recomputing them here would move every edge by that step.
            mujoco.mj_copyData(d, self.model, self.data)
        mujoco.mj_camlight(m, d)  # the nominal scene camera's pose (the episode's may be bumped)
        renderer.update_scene(d, camera=camera)
        image = renderer.render()
        _release_gl_context()
        return image

    def camera_intrinsics(self, camera: str) -> tuple[float, float, float, float]:
        """Pinhole (fx, fy, cx, cy) in pixels, from the camera's vertical field of view.

        MuJoCo cameras have square pixels and the principal point at the image centre.
        """
        self._check_camera(camera)
        fovy = math.radians(float(self.model.cam_fovy[self.model.camera(camera).id]))
        w, h = self.cfg.image_width, self.cfg.image_height
        fy = 0.5 * h / math.tan(0.5 * fovy)
        return fy, fy, 0.5 * w, 0.5 * h

    def close(self) -> None:
        """Release the renderers (their GL contexts). Safe to call twice."""
        with self._lock:
            renderers, self._renderers = self._renderers, []
            self._closed = True
        for r in renderers:
            try:
                r.close()
            except Exception as err:  # noqa: BLE001 - a context from a dead thread may already be gone
                log.debug("renderer close failed (its GL context is gone): %s", err)
        self._local = threading.local()

    def __enter__(self) -> PandaSim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
