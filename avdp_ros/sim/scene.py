"""MuJoCo scene for the sim: Franka Panda (from the installed gymnasium-robotics assets), table,
task objects, two cameras and lights, built with ``mujoco.MjSpec``.

The Panda XML in gymnasium-robotics is split into ``<mujocoinclude>`` fragments (assets,
kinematic chain, actuators). ``MjSpec.from_string`` cannot resolve ``<include>`` from memory, so
the fragments are spliced into one document here and the mesh directory is pointed at the
installed package; nothing is copied into this repository.

Changes made to the stock model, and why:
- The arm's position actuators become torque motors: the arm is driven by our operational-space
  controller (``controller.py``), which writes torques into ``ctrl``.
- The finger position actuators are kept (one per finger, 0..0.04 m each); a gripper width
  command in metres is split evenly between them.
- The stock joint damping (100 / 10) is meant for stiff position servos; under torque control it
  would eat most of the torque budget, so it is reduced to a small realistic value.
- Visual meshes (136k faces) are swapped for the collision meshes (~2.5k faces), and shadows and
  reflections are disabled, so two cameras can render at 30 Hz on a CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable

import mujoco
import numpy as np

from avdp_ros.sim import surfaces

# Names other modules rely on.
EE_SITE = "ee_site"  # tool centre point, between the finger pads
HAND_BODY = "panda0_link7"
FINGER_BODIES = ("panda0_leftfinger", "panda0_rightfinger")
ARM_JOINTS = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
ARM_ACTUATORS = tuple(f"panda0_joint{i}" for i in range(1, 8))
FINGER_ACTUATORS = ("r_gripper_finger_joint", "l_gripper_finger_joint")
CAMERAS = ("camera", "wrist")
TABLE_GEOM = "table"
BACKDROP_GEOM = "backdrop"
# Distractor slots (sim/appearance.py places, shows and colours them per episode): one geom per
# shape, half-height first so each stands on the table. MuJoCo geom sizes.
DISTRACTOR_SIZES = {"box": (0.025, 0.018, 0.03), "cylinder": (0.022, 0.035), "sphere": (0.025,),
                    "capsule": (0.015, 0.03)}
_DISTRACTOR_HALF_HEIGHT = {"box": 0.03, "cylinder": 0.035, "sphere": 0.025, "capsule": 0.045}


def distractor_name(slot: int, shape: str | None = None) -> str:
    return f"distractor{slot}" + (f"_{shape}" if shape else "")

# Franka limits: joints 1-4 87 Nm, 5-7 12 Nm.
ARM_TORQUE_LIMITS = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
# Per-finger opening range of the Panda hand (total width 0..0.08 m).
FINGER_MAX = 0.04
# Where the tool centre point sits on link7 (+z is the approach axis). The (1.75x stretched)
# fingertips end at z ~ 0.26, so the TCP is ~1.7 cm above the tips, on the finger pads.
TCP_OFFSET = 0.243


def franka_assets_dir() -> str:
    """Directory of the Panda model inside the installed gymnasium-robotics package.

    Located with ``find_spec`` so that gymnasium_robotics itself is not imported (its import
    prints warnings and pulls in gymnasium).
    """
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "gymnasium_robotics is not installed: the Panda model and meshes are loaded from "
            "its package (pip install gymnasium-robotics)"
        )
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "envs", "assets", "kitchen_franka", "franka_assets")
    if not os.path.isfile(os.path.join(path, "chain.xml")):
        raise RuntimeError(f"expected the Panda model at {path}/chain.xml, but it is missing")
    return path


def _fragment(path: str) -> str:
    """Inner text of a ``<mujocoinclude>`` file, comments removed."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"<!--.*?-->", "", f.read(), flags=re.S)
    match = re.search(r"<mujocoinclude>(.*)</mujocoinclude>", text, flags=re.S)
    if match is None:
        raise RuntimeError(f"{path}: expected a <mujocoinclude> document")
    return match.group(1)


def look_at_xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> list[float]:
    """MuJoCo camera ``xyaxes`` for a camera at `pos` looking at `target` (camera looks along -z)."""
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, np.asarray(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    return [*x, *y]


def _xyaxes_to_quat(xyaxes) -> list[float]:
    """MuJoCo (w, x, y, z) quaternion of a frame given its x and y axes."""
    x = np.asarray(xyaxes[:3], float)
    y = np.asarray(xyaxes[3:], float)
    mat = np.stack([x, y, np.cross(x, y)], axis=1)
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, mat.ravel())
    return list(q)


def _set_damping(joint, value: float) -> None:
    """Set a joint's linear damping (MuJoCo 4 stores damping as a 3-vector; index 0 is linear)."""
    damping = np.array(joint.damping, dtype=np.float64).reshape(-1)
    damping[0] = value
    joint.damping = damping if damping.size > 1 else float(value)


def load_panda_spec() -> mujoco.MjSpec:
    """Panda arm + hand as an MjSpec, with torque motors on the arm and light visual meshes."""
    root = franka_assets_dir()
    xml = (
        '<mujoco model="avdp_panda">'
        + _fragment(os.path.join(root, "assets.xml"))
        + "<worldbody>"
        + _fragment(os.path.join(root, "chain.xml"))
        + "</worldbody>"
        + _fragment(os.path.join(root, "actuator.xml"))
        + "</mujoco>"
    )
    spec = mujoco.MjSpec.from_string(xml)
    spec.meshdir = os.path.join(root, "meshes")
    # Light visuals: the "_viz" meshes become the collision meshes (same frames, ~50x fewer faces).
    for mesh in spec.meshes:
        if mesh.file.startswith("visual/"):
            mesh.file = "collision/" + mesh.file[len("visual/"):]

    for name, limit in zip(ARM_ACTUATORS, ARM_TORQUE_LIMITS):
        act = spec.actuator(name)
        act.set_to_motor()
        act.ctrllimited = 1
        act.ctrlrange = [-limit, limit]
        act.forcelimited = 1
        act.forcerange = [-limit, limit]
    for name in ARM_JOINTS:
        joint = spec.joint(name)
        _set_damping(joint, 0.5)
        # Reflected rotor inertia, as on the real arm; also keeps the light wrist links stable.
        joint.armature = 0.1
    for name in FINGER_JOINTS:
        # Stock: damping 100, armature 5 -> a ~0.2 s time constant; halve it for a snappier hand.
        _set_damping(spec.joint(name), 50.0)
        spec.joint(name).armature = 2.0

    # The stock "end_effector" site is drawn as a grey ball in front of the wrist camera.
    spec.site("end_effector").group = 4
    hand = spec.body(HAND_BODY)
    # TCP frame: z along the approach axis, y along the finger opening direction
    # (the fingers are mounted at -45 deg about link7 z).
    hand.add_site(
        name=EE_SITE, pos=[0, 0, TCP_OFFSET], size=[0.005, 0, 0], rgba=[1, 0, 0, 0],
        quat=[np.cos(-np.pi / 8), 0, 0, np.sin(-np.pi / 8)], group=4,
    )
    return spec


SPOT_HEIGHT = 1.0  # m above the table top: where the spot light hangs, pointing straight down
SPOT_EXPONENT = 8.0  # falloff of the spot's light from its axis to the edge of its cone


# The extent and centre MuJoCo computed for the scene without the backdrop and distractor slots
# (build_model pins them: they scale the cameras' clip planes).
SCENE_EXTENT = 2.2899509219535163
SCENE_CENTER = (0.35, 0.0, 0.09497546)


def _add_environment(spec: mujoco.MjSpec) -> None:
    """Table (top at z = 0, robot base at the origin), floor, lights."""
    spec.visual.quality.shadowsize = 0  # no shadow maps: the main cost of rendering
    spec.visual.headlight.ambient = [0.4, 0.4, 0.4]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    world = spec.worldbody
    world.add_geom(
        name=TABLE_GEOM, type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.65, 0.6, 0.02],
        pos=[0.35, 0.0, -0.02], rgba=[0.55, 0.42, 0.3, 1], friction=[0.6, 0.005, 0.0001],
    )
    world.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.1], pos=[0, 0, -0.75],
        rgba=[0.35, 0.37, 0.4, 1], contype=0, conaffinity=0,
    )
    world.add_light(
        name="key", pos=[0.6, -0.6, 2.0], dir=[-0.2, 0.3, -1.0], type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
        castshadow=0, diffuse=[0.6, 0.6, 0.6],
    )
    # A wall behind the robot; hidden (geom group 4, not rendered) in the nominal scene, shown and
    # coloured per episode by sim/appearance.py. Visual only.
    world.add_geom(
        name=BACKDROP_GEOM, type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.01, 8.0, 3.0], pos=[-0.6, 0.0, 0.5],
        rgba=[0.0, 0.0, 0.0, 1], contype=0, conaffinity=0, group=4,
    )
    _add_distractor_slots(spec)
    # Off in the nominal scene; sim/appearance.py turns it on and colours it per episode.
    world.add_light(
        name="fill", pos=[0.6, 0.6, 2.0], dir=[-0.2, -0.3, -1.0], type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
        castshadow=0, diffuse=[0.0, 0.0, 0.0], active=0,
    )
    # A spot light whose pool of light falls off across the table (a desk lamp, a ceiling spot); off
    # in the nominal scene, aimed and switched on per episode by sim/appearance.py.
    world.add_light(
        name="spot", pos=[0.5, 0.0, SPOT_HEIGHT], dir=[0.0, 0.0, -1.0], type=mujoco.mjtLightType.mjLIGHT_SPOT,
        castshadow=0, diffuse=[0.0, 0.0, 0.0], cutoff=30.0, exponent=SPOT_EXPONENT, active=0,
    )
    _add_table_materials(spec)


def _add_distractor_slots(spec: mujoco.MjSpec) -> None:
    """Mocap bodies (immovable: a solid one is an obstacle, never pushed) parked under the table,
    every geom hidden and without contacts until sim/appearance.py shows one."""
    from avdp_ros.sim.appearance import MAX_DISTRACTORS, SHAPES

    types = {"box": mujoco.mjtGeom.mjGEOM_BOX, "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
             "sphere": mujoco.mjtGeom.mjGEOM_SPHERE, "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE}
    for k in range(MAX_DISTRACTORS):
        body = spec.worldbody.add_body(name=distractor_name(k), mocap=True, pos=[0.3, 0.0, -0.3])
        for shape in SHAPES:
            body.add_geom(name=distractor_name(k, shape), type=types[shape], size=[*DISTRACTOR_SIZES[shape], 0, 0][:3],
                          pos=[0, 0, _DISTRACTOR_HALF_HEIGHT[shape]], rgba=[0.8, 0.8, 0.2, 1], contype=0,
                          conaffinity=0, group=4, friction=[0.6, 0.005, 0.0001])


PLANKS_SIZE = 256  # px: the numpy-drawn surface; MuJoCo's built-in ones are 128


def _add_table_materials(spec: mujoco.MjSpec) -> None:
    """One material per textured table surface of sim/appearance.py ("flat" uses the geom colour),
    and one per surface of the procedural bank (sim/surfaces.py). Textures are grey-scale: the
    material colour set per episode tints them."""
    builtin, mark = mujoco.mjtBuiltin, mujoco.mjtMark
    kinds = {
        "checker": dict(builtin=builtin.mjBUILTIN_CHECKER, rgb1=[1, 1, 1], rgb2=[0.7, 0.7, 0.7]),
        "gradient": dict(builtin=builtin.mjBUILTIN_GRADIENT, rgb1=[1, 1, 1], rgb2=[0.45, 0.45, 0.45]),
        "noise": dict(builtin=builtin.mjBUILTIN_FLAT, rgb1=[1, 1, 1], rgb2=[1, 1, 1], mark=mark.mjMARK_RANDOM,
                      random=0.25, markrgb=[0.55, 0.55, 0.55]),
        # square tiles with grout lines (repeated 3x3 over the table)
        "tiles": dict(builtin=builtin.mjBUILTIN_FLAT, rgb1=[0.92, 0.92, 0.92], rgb2=[0.92, 0.92, 0.92],
                      mark=mark.mjMARK_EDGE, markrgb=[0.5, 0.5, 0.5]),
        "planks": dict(data=_planks_texture(PLANKS_SIZE), nchannel=3),
    }
    repeat = {"checker": [4, 4], "tiles": [3, 3]}
    for name, kw in kinds.items():
        size = PLANKS_SIZE if name == "planks" else 128
        _add_surface(spec, f"table_{name}", size, repeat.get(name, [1, 1]), **kw)
    for k, data in enumerate(surfaces.bank()):  # the procedural surfaces, one material each
        _add_surface(spec, surface_material(k), surfaces.SIZE, [1, 1], data=data, nchannel=3)


def _add_surface(spec: mujoco.MjSpec, name: str, size: int, texrepeat: list[int],
                 data: np.ndarray | None = None, **texture) -> None:
    """A 2D texture (built in, or from a uint8 array) and the material that shows it, both `name`."""
    tex = spec.add_texture(name=name, type=mujoco.mjtTexture.mjTEXTURE_2D, width=size, height=size, **texture)
    if data is not None:
        tex.data = data.tobytes()  # as bytes: add_texture(data=array) converts element by element (20 ms each)
    mat = spec.add_material(name=name, texrepeat=texrepeat)
    textures = [""] * int(mujoco.mjtTextureRole.mjNTEXROLE)
    textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = name
    mat.textures = textures


def surface_material(index: int) -> str:
    """Name of the texture and material of procedural surface `index` (sim/surfaces.py)."""
    return f"table_procedural_{index:02d}"


def _planks_texture(size: int) -> np.ndarray:
    """A wooden-plank table top, grey-scale uint8 (size, size, 3): 7 boards, each its own shade
    (0.6-1.0) and faint grain along it, with staggered butt joints and dark seams. A surface whose
    brightness changes across the table in steps, as a real workshop table's does; drawn from a
    fixed seed, so the texture is part of the scene, not of the episode."""
    rng = np.random.default_rng(7)
    boards, v = 7, np.zeros((size, size))
    edges = np.linspace(0, size, boards + 1).astype(int)
    along = np.arange(size)
    for b in range(boards):
        lo, hi = edges[b], edges[b + 1]
        joint = int(rng.integers(size // 4, 3 * size // 4))
        for a, z in ((0, joint), (joint, size)):  # two boards end to end
            grain = 0.04 * np.sin(along[a:z, None] * rng.uniform(0.05, 0.12) + rng.uniform(0, 6.3)
                                  + np.arange(hi - lo)[None] * rng.uniform(0.6, 1.2))
            v[a:z, lo:hi] = rng.uniform(0.6, 1.0) + grain
            v[max(z - 1, 0):z, lo:hi] = 0.4  # the butt joint
        v[:, lo:lo + 2] = 0.4  # the seam between boards
    return np.repeat((np.clip(v, 0.0, 1.0) * 255).astype(np.uint8)[..., None], 3, axis=2)


def _add_cameras(spec: mujoco.MjSpec) -> None:
    """Third-person "camera" (tripod at the front-side of the table) and hand-mounted "wrist"."""
    pos = [1.2, 0.55, 0.7]
    spec.worldbody.add_camera(
        name="camera", pos=pos, quat=_xyaxes_to_quat(look_at_xyaxes(pos, [0.36, 0.0, 0.2])),
        fovy=58.0,
    )
    # Wrist camera: on the side of the hand, perpendicular to the finger opening axis so both
    # fingers and a grasped object are in view, looking down along the gripper.
    side = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)  # link7 frame; fingers open along (1, 1, 0)
    cam_pos = side * 0.085 + np.array([0.0, 0.0, 0.12])
    look = np.array([0.0, 0.0, 0.30])
    up = -side  # image "up" points away from the camera mount, so the fingers are at the bottom
    spec.body(HAND_BODY).add_camera(
        name="wrist", pos=list(cam_pos), quat=_xyaxes_to_quat(look_at_xyaxes(cam_pos, look, up)),
        fovy=75.0,
    )


def build_model(
    add_objects: Callable[[mujoco.MjSpec], None],
    physics_dt: float = 0.002,
    offscreen_size: tuple[int, int] = (640, 480),
) -> mujoco.MjModel:
    """Compile the full scene.

    Args:
        add_objects: adds the task's objects to the spec (see ``tasks.py``).
        physics_dt: physics time step in seconds.
        offscreen_size: (width, height) the offscreen framebuffer must hold; renders larger than
            this fail, so pass the largest image size that will be requested.

    Returns:
        The compiled ``MjModel``.
    """
    spec = load_panda_spec()
    spec.option.timestep = physics_dt
    # implicitfast: joint damping handled implicitly -> stable with light wrist links.
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC  # better grasp friction than pyramidal
    spec.option.impratio = 10.0  # stiffer friction constraint: grasped objects slip less
    spec.visual.global_.offwidth = max(640, int(offscreen_size[0]))
    spec.visual.global_.offheight = max(480, int(offscreen_size[1]))
    _add_environment(spec)
    _add_cameras(spec)
    add_objects(spec)
    # Pin the model's spatial extent to the scene's own (robot, table, floor, objects), as compiled
    # before the backdrop and the distractor slots existed. MuJoCo scales every camera's near clip
    # plane by it (znear 0.01 x extent): the 16 m backdrop wall would raise it from 2.29 to 17 m and
    # put the near plane 17 cm from the lens, cutting the fingers out of the wrist camera.
    spec.stat.extent = SCENE_EXTENT
    spec.stat.center = SCENE_CENTER
    return spec.compile()
