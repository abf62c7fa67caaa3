"""Tasks: which objects the scene holds, seeded random initial states, success predicates and
natural-language instructions.

Every task owns a red 5 cm cube on a free joint. Goal markers (the push target region, the bin)
are mocap bodies, so a reset can move them without rebuilding the model. Object poses follow the
package convention: (x, y, z, qx, qy, qz, qw) in the base frame (== world).
"""

from __future__ import annotations

import mujoco
import numpy as np

from avdp_ros.geometry import quat_from_mj, quat_to_mj
from avdp_ros.sim.scene import FINGER_BODIES

CUBE_HALF = 0.025  # cube half-size (m): 5 cm fits the 8 cm Panda gripper
CUBE_MASS = 0.1  # kg


def _yaw_quat(yaw: float) -> np.ndarray:
    """(x, y, z, w) quaternion of a rotation about +z."""
    return np.array([0.0, 0.0, np.sin(0.5 * yaw), np.cos(0.5 * yaw)])


def _add_cube(spec: mujoco.MjSpec, name: str = "cube", rgba=(0.85, 0.1, 0.1, 1.0)) -> None:
    body = spec.worldbody.add_body(name=name, pos=[0.5, 0.0, CUBE_HALF])
    body.add_freejoint(name=f"{name}_joint")
    body.add_geom(
        name=f"{name}_geom", type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF] * 3,
        mass=CUBE_MASS, rgba=list(rgba), friction=[1.0, 0.005, 0.0001], condim=4,
    )


class Task:
    """Base class; subclasses fill in the objects, the sampling and the predicate."""

    name: str = ""
    instruction: str = ""
    object_names: tuple[str, ...] = ()  # the cube first, then the goal marker
    # Gripper width (m) at reset: closed for pushing, open for grasping.
    initial_gripper: float = 0.0

    def add_objects(self, spec: mujoco.MjSpec) -> None:
        raise NotImplementedError

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator) -> None:
        """Place the objects (call before mj_forward)."""
        raise NotImplementedError

    def success(self, model: mujoco.MjModel, data: mujoco.MjData) -> bool:
        raise NotImplementedError

    def goal_distance(self, model: mujoco.MjModel, data: mujoco.MjData) -> float:
        """Table-plane distance (m) from the cube to the goal marker's centre: how far a failed
        episode got (success needs < 5 cm for push, < 6.5 cm per axis for the bin)."""
        cube, goal = (self.body_pose(model, data, n)[:2] for n in self.object_names[:2])
        return float(np.linalg.norm(cube - goal))

    # -- helpers shared by the tasks ------------------------------------------------------------
    @staticmethod
    def set_free_pose(model, data, body: str, pos, quat_xyzw) -> None:
        joint = model.body(body).jntadr[0]
        adr = model.jnt_qposadr[joint]
        data.qpos[adr:adr + 3] = pos
        data.qpos[adr + 3:adr + 7] = quat_to_mj(quat_xyzw)
        data.qvel[model.jnt_dofadr[joint]:model.jnt_dofadr[joint] + 6] = 0.0

    @staticmethod
    def set_mocap_pose(model, data, body: str, pos, quat_xyzw) -> None:
        mocap = model.body(body).mocapid[0]
        data.mocap_pos[mocap] = pos
        data.mocap_quat[mocap] = quat_to_mj(quat_xyzw)

    @staticmethod
    def body_pose(model, data, body: str) -> np.ndarray:
        bid = model.body(body).id
        return np.concatenate([data.xpos[bid], quat_from_mj(data.xquat[bid])])

    @staticmethod
    def touches_fingers(model, data, body: str) -> bool:
        """Whether any geom of `body` is in contact with a finger."""
        bid = model.body(body).id
        fingers = {model.body(f).id for f in FINGER_BODIES}
        for i in range(data.ncon):
            b1 = model.geom_bodyid[data.contact.geom1[i]]
            b2 = model.geom_bodyid[data.contact.geom2[i]]
            if (b1 == bid and b2 in fingers) or (b2 == bid and b1 in fingers):
                return True
        return False

    @staticmethod
    def body_speed(model, data, body: str) -> float:
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, model.body(body).id, vel, 0)
        return float(np.linalg.norm(vel[3:]))


class PushTask(Task):
    """Push the cube across the table onto a target region; the gripper stays closed."""

    name = "push"
    instruction = "push the red cube onto the green target region"
    object_names = ("cube", "target")
    initial_gripper = 0.0
    target_radius = 0.05  # success radius (m) = the marker's radius
    cube_x = (0.40, 0.60)  # cube position range (m)
    cube_y = (-0.15, 0.15)
    goal_x = (0.35, 0.65)  # where target centres may lie (m)
    goal_y = (-0.22, 0.22)
    push_distance = (0.12, 0.22)  # cube-to-target distance (m)

    def add_objects(self, spec: mujoco.MjSpec) -> None:
        _add_cube(spec)
        # Visual-only disc, 1 mm above the table; mocap so reset can move it.
        target = spec.worldbody.add_body(name="target", mocap=True, pos=[0.5, 0.2, 0.0])
        target.add_geom(
            name="target_geom", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
            size=[self.target_radius, 0.001, 0], pos=[0, 0, 0.001], rgba=[0.1, 0.75, 0.2, 1],
            contype=0, conaffinity=0,
        )

    def reset(self, model, data, rng) -> None:
        cube = np.array([rng.uniform(*self.cube_x), rng.uniform(*self.cube_y), CUBE_HALF])
        yaw = rng.uniform(-np.pi / 4, np.pi / 4)
        for _ in range(1000):  # rejection sampling; almost always succeeds in a few draws
            angle = rng.uniform(-np.pi, np.pi)
            dist = rng.uniform(*self.push_distance)
            goal = cube[:2] + dist * np.array([np.cos(angle), np.sin(angle)])
            if self.goal_x[0] <= goal[0] <= self.goal_x[1] and self.goal_y[0] <= goal[1] <= self.goal_y[1]:
                break
        self.set_free_pose(model, data, "cube", cube, _yaw_quat(yaw))
        self.set_mocap_pose(model, data, "target", [goal[0], goal[1], 0.0], _yaw_quat(0.0))

    def success(self, model, data) -> bool:
        cube = data.xpos[model.body("cube").id]
        goal = data.mocap_pos[model.body("target").mocapid[0]]
        on_table = cube[2] < CUBE_HALF + 0.01
        return bool(on_table and np.linalg.norm(cube[:2] - goal[:2]) < self.target_radius)


class PickPlaceTask(Task):
    """Pick the cube up and place it into the bin, then let go."""

    name = "pick_place"
    instruction = "pick up the red cube and place it in the blue bin"
    object_names = ("cube", "bin")
    initial_gripper = 0.08
    bin_inner = 0.065  # inner half-width of the bin (m)
    bin_wall = 0.006  # wall half-thickness (m)
    bin_height = 0.05  # wall height (m)
    bin_floor = 0.004  # floor thickness (m)
    cube_x = (0.40, 0.60)
    cube_y = (-0.20, 0.20)
    bin_x = (0.40, 0.60)
    bin_y = (-0.25, 0.25)
    min_separation = 0.20  # cube-to-bin centre distance (m), so the cube never starts in the bin

    def add_objects(self, spec: mujoco.MjSpec) -> None:
        _add_cube(spec)
        body = spec.worldbody.add_body(name="bin", mocap=True, pos=[0.5, -0.2, 0.0])
        rgba = [0.15, 0.3, 0.85, 1]
        box = mujoco.mjtGeom.mjGEOM_BOX
        outer = self.bin_inner + 2 * self.bin_wall
        body.add_geom(name="bin_floor", type=box, size=[outer, outer, self.bin_floor / 2],
                      pos=[0, 0, self.bin_floor / 2], rgba=rgba)
        h = self.bin_height / 2
        off = self.bin_inner + self.bin_wall
        for i, (x, y, sx, sy) in enumerate(
            [(off, 0, self.bin_wall, outer), (-off, 0, self.bin_wall, outer),
             (0, off, outer, self.bin_wall), (0, -off, outer, self.bin_wall)]
        ):
            body.add_geom(name=f"bin_wall{i}", type=box, size=[sx, sy, h], pos=[x, y, h], rgba=rgba)

    def reset(self, model, data, rng) -> None:
        cube = np.array([rng.uniform(*self.cube_x), rng.uniform(*self.cube_y), CUBE_HALF])
        yaw = rng.uniform(-np.pi / 4, np.pi / 4)
        for _ in range(1000):
            goal = np.array([rng.uniform(*self.bin_x), rng.uniform(*self.bin_y)])
            if np.linalg.norm(goal - cube[:2]) >= self.min_separation:
                break
        self.set_free_pose(model, data, "cube", cube, _yaw_quat(yaw))
        self.set_mocap_pose(model, data, "bin", [goal[0], goal[1], 0.0], _yaw_quat(0.0))

    def success(self, model, data) -> bool:
        cube = data.xpos[model.body("cube").id]
        bin_pos = data.mocap_pos[model.body("bin").mocapid[0]]
        inside = np.all(np.abs(cube[:2] - bin_pos[:2]) < self.bin_inner)
        resting = cube[2] < self.bin_floor + CUBE_HALF + 0.01 and self.body_speed(model, data, "cube") < 0.05
        released = not self.touches_fingers(model, data, "cube")
        return bool(inside and resting and released)


TASKS: dict[str, type[Task]] = {"push": PushTask, "pick_place": PickPlaceTask}


def make_task(name: str) -> Task:
    """Instantiate a registered task by name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name]()
