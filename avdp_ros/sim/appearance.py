"""Seeded scene appearance: table and floor colours and textures, a backdrop, lights, a bumped
tripod, shades of the task objects, distractor objects.

An `Appearance` is a small validated dataclass; a named `AppearanceDistribution` draws one from an
episode seed (`draw(name, seed)`), independently of the task's layout (its own random stream), so
the same seed gives the same layout in every suite. `PandaSim` applies it at each reset
(`apply`, which writes model fields only: nothing is recompiled) and reports it in the reset
info, so the bridge's episode_info, the bag's episode.json and the converted dataset carry it
and any episode can be re-rendered exactly (`Appearance.from_dict`).

Distributions (`DISTRIBUTIONS`):
- `nominal`: the one fixed look the sim always had (every seed draws the same appearance).
- `train`: what data collection randomises over; `train_spot` adds a spot light (tried, not kept);
  `train_surfaces` and `train_clouds` put a procedural surface (sim/surfaces.py), structured or
  smooth, on half of the tables (tried, not kept).
- `heldout_table`, `heldout_light`, `heldout_camera`: evaluation suites whose defining parameters
  lie outside `train` by construction (disjoint texture kinds, hue / intensity / colour
  temperature intervals, camera offsets); every other parameter is drawn as in `train`.
  `test_appearance.py` checks that `train` can never draw one of them.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avdp_ros.sim import surfaces

RGB = tuple[float, float, float]
# Table surfaces (scene.py builds each); "procedural" is one of the bank of sim/surfaces.py, picked
# by `Appearance.table_surface`.
TEXTURES = ("flat", "checker", "gradient", "noise", "tiles", "planks", "procedural")
_STREAM = 0x61707065  # "appe": the appearance draw's own random stream, apart from the layout's
# Distractors: other shapes (scene.py builds one geom of each per slot, fixed sizes) on the table's
# sides, outside every task's reach (cubes and bins stay within |y| < 0.33 m, the arm above them),
# so a colliding one is an obstacle the arm never has to push through.
SHAPES = ("box", "cylinder", "sphere", "capsule")
MAX_DISTRACTORS = 3
DISTRACTOR_X = (0.25, 0.80)  # m, table frame (robot base at the origin)
DISTRACTOR_Y = (0.38, 0.52)  # m, |y|: either side of the workspace
DISTRACTOR_GAP = 0.09  # m, least centre distance between two distractors
# Where a spot light may aim (table frame): anywhere over the tasks' workspace and a little beyond.
SPOT_X = (0.2, 0.8)  # m
SPOT_Y = (-0.45, 0.45)  # m


@dataclass(frozen=True)
class Distractor:
    """An object of another shape and colour standing on the table, colliding or not."""

    shape: str
    xy: tuple[float, float]
    yaw: float = 0.0  # deg
    rgb: RGB = (0.8, 0.8, 0.2)
    collide: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"Distractor.shape = {self.shape!r}: expected one of {SHAPES}")
        xy = tuple(float(v) for v in self.xy)
        if (len(xy) != 2 or not all(math.isfinite(v) for v in xy)
                or not DISTRACTOR_X[0] <= xy[0] <= DISTRACTOR_X[1]
                or not DISTRACTOR_Y[0] <= abs(xy[1]) <= DISTRACTOR_Y[1]):
            raise ValueError(f"Distractor.xy = {self.xy!r}: expected x in {DISTRACTOR_X} m and |y| in "
                             f"{DISTRACTOR_Y} m (the table's sides, out of the tasks' reach)")
        object.__setattr__(self, "xy", xy)
        if not math.isfinite(self.yaw):
            raise ValueError(f"Distractor.yaw = {self.yaw!r}: expected a finite angle (deg)")
        object.__setattr__(self, "yaw", float(self.yaw))
        object.__setattr__(self, "rgb", _rgb("Distractor", "rgb", self.rgb))
        object.__setattr__(self, "collide", bool(self.collide))


def _rgb(owner: str, name: str, value) -> RGB:
    v = tuple(float(x) for x in value)
    if len(v) != 3 or not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in v):
        raise ValueError(f"{owner}.{name} = {value!r}: expected 3 values in [0, 1]")
    return v  # type: ignore[return-value]


@dataclass(frozen=True)
class Appearance:
    """One scene look. Defaults are the nominal scene (scene.py's compile-time values)."""

    table_rgb: RGB = (0.55, 0.42, 0.3)
    table_texture: str = "flat"          # one of TEXTURES
    table_surface: int = 0               # which procedural surface (sim/surfaces.py), if "procedural"
    floor_rgb: RGB = (0.35, 0.37, 0.4)
    backdrop_rgb: RGB = (0.0, 0.0, 0.0)  # wall behind the robot; all 0 = none (the black void)
    light_dir: tuple[float, float, float] = (-0.2, 0.3, -1.0)  # key light direction (normalised here)
    light_rgb: RGB = (0.6, 0.6, 0.6)     # key light diffuse
    ambient_rgb: RGB = (0.4, 0.4, 0.4)   # headlight ambient
    headlight_rgb: RGB = (0.5, 0.5, 0.5)  # headlight diffuse
    fill_rgb: RGB = (0.0, 0.0, 0.0)      # second light, from the other side; all 0 = off (one light)
    spot_rgb: RGB = (0.0, 0.0, 0.0)      # spot light from above, a pool falling off across the table; 0 = off
    spot_xy: tuple[float, float] = (0.5, 0.0)  # m, the table point under the spot (its axis hits it)
    spot_cutoff: float = 30.0            # deg, half-angle of the spot's cone
    camera_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # scene camera position shift (m)
    camera_rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # yaw, pitch, roll about its view (deg)
    fovy_offset: float = 0.0             # scene camera field-of-view change (deg)
    cube_rgb: RGB = (0.85, 0.1, 0.1)     # shades within the named colours of the instructions
    target_rgb: RGB = (0.1, 0.75, 0.2)
    bin_rgb: RGB = (0.15, 0.3, 0.85)
    distractors: tuple[Distractor, ...] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.endswith("_rgb"):
                object.__setattr__(self, f.name, _rgb("Appearance", f.name, getattr(self, f.name)))
        if self.table_texture not in TEXTURES:
            raise ValueError(f"Appearance.table_texture = {self.table_texture!r}: expected one of {TEXTURES}")
        k = self.table_surface
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < surfaces.COUNT:
            raise ValueError(f"Appearance.table_surface = {k!r}: expected an integer in 0..{surfaces.COUNT - 1} "
                             "(one of the procedural surfaces of sim/surfaces.py)")
        object.__setattr__(self, "table_surface", int(k))
        d = np.asarray(self.light_dir, dtype=float)
        if d.shape != (3,) or not np.all(np.isfinite(d)) or d[2] >= -0.1 * np.linalg.norm(d):
            raise ValueError(f"Appearance.light_dir = {self.light_dir!r}: expected 3 finite values pointing "
                             "down (z < 0): the light comes from above the table")
        object.__setattr__(self, "light_dir", tuple(float(x) for x in d / np.linalg.norm(d)))
        for name, limit, unit in (("camera_offset", 0.1, "m"), ("camera_rotation", 10.0, "deg")):
            v = np.asarray(getattr(self, name), dtype=float)
            if v.shape != (3,) or not np.all(np.isfinite(v)) or np.abs(v).max() > limit:
                raise ValueError(f"Appearance.{name} = {getattr(self, name)!r}: expected 3 values within "
                                 f"+-{limit} {unit} (a bumped tripod, not another viewpoint)")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if not (math.isfinite(self.fovy_offset) and abs(self.fovy_offset) <= 10.0):
            raise ValueError(f"Appearance.fovy_offset = {self.fovy_offset!r}: expected within +-10 deg")
        xy = tuple(float(v) for v in self.spot_xy)
        if (len(xy) != 2 or not all(math.isfinite(v) for v in xy)
                or not (SPOT_X[0] <= xy[0] <= SPOT_X[1] and SPOT_Y[0] <= xy[1] <= SPOT_Y[1])):
            raise ValueError(f"Appearance.spot_xy = {self.spot_xy!r}: expected x in {SPOT_X} m and y in {SPOT_Y} m "
                             "(a point on the table)")
        object.__setattr__(self, "spot_xy", xy)
        if not (math.isfinite(self.spot_cutoff) and 5.0 <= self.spot_cutoff <= 60.0):
            raise ValueError(f"Appearance.spot_cutoff = {self.spot_cutoff!r}: expected 5-60 deg")
        object.__setattr__(self, "spot_cutoff", float(self.spot_cutoff))
        items = tuple(self.distractors)
        if len(items) > MAX_DISTRACTORS or not all(isinstance(x, Distractor) for x in items):
            raise ValueError(f"Appearance.distractors: expected at most {MAX_DISTRACTORS} Distractor, "
                             f"got {self.distractors!r}")
        for i, a in enumerate(items):
            for b in items[i + 1:]:
                if math.dist(a.xy, b.xy) < DISTRACTOR_GAP:
                    raise ValueError(f"Appearance.distractors: {a.xy} and {b.xy} are closer than "
                                     f"{DISTRACTOR_GAP} m (they would overlap)")
        object.__setattr__(self, "distractors", items)

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Appearance:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Appearance: unknown fields {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if "distractors" in d:
            known = {f.name for f in dataclasses.fields(Distractor)}
            items = []
            for x in d["distractors"]:
                if not isinstance(x, dict) or set(x) - known:
                    raise ValueError(f"Appearance.distractors: expected objects with fields {sorted(known)}, "
                                     f"got {x!r}")
                items.append(Distractor(**{k: tuple(v) if isinstance(v, list) else v for k, v in x.items()}))
            d["distractors"] = tuple(items)
        return cls(**d)


Interval = tuple[float, float]


def _inside(x: float, intervals: tuple[Interval, ...]) -> bool:
    return any(lo <= x <= hi for lo, hi in intervals)


@dataclass(frozen=True)
class AppearanceDistribution:
    """Ranges an appearance is drawn from. Each axis is a tuple of closed intervals (drawn uniformly
    over their total length); `contains` says whether an appearance could come from here."""

    name: str
    textures: tuple[str, ...] = ("flat", "checker", "tiles", "planks")
    table_hue: tuple[Interval, ...] = ((15.0, 45.0), (190.0, 230.0))  # deg: woods, blue-greys
    table_sat: tuple[Interval, ...] = ((0.1, 0.5),)
    table_val: tuple[Interval, ...] = ((0.35, 0.75),)
    floor_val: tuple[Interval, ...] = ((0.2, 0.55),)
    light_intensity: tuple[Interval, ...] = ((0.75, 1.25),)  # x the nominal key, ambient and headlight
    light_temperature: tuple[Interval, ...] = ((-0.25, 0.25),)  # -1 cool (blue) .. +1 warm (orange)
    light_azimuth: tuple[Interval, ...] = ((90.0, 150.0),)  # deg, direction the key light comes from
    light_elevation: tuple[Interval, ...] = ((55.0, 80.0),)
    fill: tuple[Interval, ...] = ((0.0, 0.3),)  # fill light intensity; below 0.05 it is off
    camera_shift: tuple[Interval, ...] = ((0.0, 0.02),)  # m, length of the camera offset
    camera_turn: tuple[Interval, ...] = ((0.0, 2.0),)  # deg, per axis magnitude
    fovy_change: tuple[Interval, ...] = ((0.0, 2.0),)  # deg, magnitude
    object_hue: float = 8.0  # deg of hue jitter of the task objects around their named colour
    backdrop: float = 0.5  # chance of a wall behind the robot (else the black void)
    backdrop_val: tuple[Interval, ...] = ((0.25, 0.8),)
    distractors: tuple[int, int] = (0, MAX_DISTRACTORS)  # how many, uniform over the closed range
    # Distractor hues away from the task objects' red, green and blue: yellows, purples; or greys.
    distractor_hue: tuple[Interval, ...] = ((35.0, 85.0), (265.0, 320.0))
    distractor_collide: float = 0.5  # chance each one is solid (an obstacle) rather than visual only
    spot: float = 0.0  # chance of a spot light, its pool somewhere on the table (`train_spot`: 0.5)
    spot_intensity: tuple[Interval, ...] = ((0.2, 0.7),)  # x the light's gain and colour, like the key's 0.6
    spot_cutoff: tuple[Interval, ...] = ((15.0, 35.0),)  # deg: a pool 0.5-1.4 m across
    procedural: float = 0.0  # chance the table gets a procedural surface instead (`train_surfaces`: 0.5)
    surface_kinds: tuple[str, ...] = surfaces.STRUCTURED  # the kinds of sim/surfaces.py it is drawn from
    fixed: Appearance | None = None  # every seed draws this (the nominal scene)

    def __post_init__(self) -> None:
        unknown = [k for k in self.surface_kinds if k not in surfaces.KINDS]
        if unknown or not self.surface_kinds:
            raise ValueError(f"AppearanceDistribution.surface_kinds = {self.surface_kinds!r}: expected some of "
                             f"{surfaces.KINDS}")

    def draw(self, seed: int) -> Appearance:
        if self.fixed is not None:
            return self.fixed
        rng = np.random.default_rng([_STREAM, int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF])

        def u(intervals: tuple[Interval, ...]) -> float:
            lengths = np.array([hi - lo for lo, hi in intervals])
            k = rng.choice(len(intervals), p=lengths / lengths.sum()) if lengths.sum() > 0 else 0
            lo, hi = intervals[k]
            return float(rng.uniform(lo, hi))

        def sign() -> float:
            return 1.0 if rng.random() < 0.5 else -1.0

        hue = u(self.table_hue) % 360.0
        table = colorsys.hsv_to_rgb(hue / 360.0, u(self.table_sat), u(self.table_val))
        floor_v = u(self.floor_val)
        gain, temp = u(self.light_intensity), u(self.light_temperature)
        tint = np.array([1.0 + 0.35 * temp, 1.0, 1.0 - 0.35 * temp])
        az, el = math.radians(u(self.light_azimuth)), math.radians(u(self.light_elevation))
        light_dir = (-math.cos(el) * math.cos(az), -math.cos(el) * math.sin(az), -math.sin(el))
        fill = u(self.fill)
        shift = u(self.camera_shift) * _unit(rng)
        turn = tuple(sign() * u(self.camera_turn) for _ in range(3))

        def light(level: float) -> RGB:
            return tuple(float(x) for x in np.clip(level * gain * tint, 0.0, 1.0))  # type: ignore[return-value]

        def shade(rgb: RGB) -> RGB:
            h, s, v = colorsys.rgb_to_hsv(*rgb)
            h = (h + rng.uniform(-self.object_hue, self.object_hue) / 360.0) % 1.0
            s = float(np.clip(s * rng.uniform(0.85, 1.0), 0.0, 1.0))
            v = float(np.clip(v * rng.uniform(0.85, 1.1), 0.0, 1.0))
            return colorsys.hsv_to_rgb(h, s, v)

        base = Appearance()
        texture, fovy = str(rng.choice(self.textures)), sign() * u(self.fovy_change)
        cube, target, bin_ = shade(base.cube_rgb), shade(base.target_rgb), shade(base.bin_rgb)
        # Drawn after everything above, so adding them left the other parameters of each seed as they were.
        backdrop = (0.0, 0.0, 0.0)
        if rng.random() < self.backdrop:
            backdrop = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.35), u(self.backdrop_val))
        items: list[Distractor] = []
        for _ in range(int(rng.integers(self.distractors[0], self.distractors[1] + 1))):
            for _try in range(100):  # rejection sampling for the gap; nearly always a few draws
                xy = (float(rng.uniform(*DISTRACTOR_X)), sign() * float(rng.uniform(*DISTRACTOR_Y)))
                if all(math.dist(xy, o.xy) >= DISTRACTOR_GAP for o in items):
                    break
            else:
                continue
            grey = rng.random() < 0.25
            rgb = colorsys.hsv_to_rgb(u(self.distractor_hue) / 360.0, 0.0 if grey else rng.uniform(0.4, 0.9),
                                      rng.uniform(0.3, 0.95))
            items.append(Distractor(shape=str(rng.choice(SHAPES)), xy=xy, yaw=float(rng.uniform(-90.0, 90.0)),
                                    rgb=rgb, collide=bool(rng.random() < self.distractor_collide)))
        spot, spot_xy, cutoff = (0.0, 0.0, 0.0), Appearance.spot_xy, Appearance.spot_cutoff
        if rng.random() < self.spot:  # drawn last, as the backdrop and distractors were
            spot_xy = (float(rng.uniform(*SPOT_X)), float(rng.uniform(*SPOT_Y)))
            spot, cutoff = light(u(self.spot_intensity)), u(self.spot_cutoff)
        surface = 0
        if rng.random() < self.procedural:  # drawn last, as the spot light was
            allowed = [k for k, kind in enumerate(surfaces.KIND_OF) if kind in self.surface_kinds]
            texture, surface = "procedural", allowed[int(rng.integers(len(allowed)))]
        return Appearance(
            table_rgb=table, table_texture=texture, table_surface=surface,
            floor_rgb=(floor_v * 0.95, floor_v, floor_v * 1.05 if floor_v < 0.95 else 1.0),
            backdrop_rgb=backdrop, distractors=tuple(items),
            light_dir=light_dir, light_rgb=light(0.6), ambient_rgb=light(0.4), headlight_rgb=light(0.5),
            fill_rgb=light(fill) if fill >= 0.05 else (0.0, 0.0, 0.0),
            spot_rgb=spot, spot_xy=spot_xy, spot_cutoff=cutoff,
            camera_offset=tuple(float(x) for x in shift), camera_rotation=turn,
            fovy_offset=fovy,
            cube_rgb=cube, target_rgb=target, bin_rgb=bin_,
        )

    def contains(self, a: Appearance) -> bool:
        """Whether `a` lies inside every range here (to float tolerance)."""
        if self.fixed is not None:
            return a == self.fixed
        h, s, v = colorsys.rgb_to_hsv(*a.table_rgb)
        gain = max(a.ambient_rgb[1] / 0.4, 1e-9)  # the green channel carries no colour temperature
        temp = (a.ambient_rgb[0] / 0.4 / gain - 1.0) / 0.35 if max(a.ambient_rgb) < 1.0 else 0.0
        el = math.degrees(math.asin(-a.light_dir[2]))
        az = math.degrees(math.atan2(-a.light_dir[1], -a.light_dir[0])) % 360.0
        fill = a.fill_rgb[1] / gain
        spot = a.spot_rgb[1] / gain
        tol = 1e-6
        widen = [tuple((lo - tol, hi + tol) for lo, hi in iv) for iv in (
            self.table_hue, self.table_sat, self.table_val, self.light_intensity, self.light_temperature,
            self.light_azimuth, self.light_elevation, self.camera_shift, self.camera_turn, self.fovy_change,
            self.spot_intensity, self.spot_cutoff)]
        th, ts, tv, li, lt, la, le, cs, ct, fc, si, sc = widen
        spot_ok = spot == 0.0 or (self.spot > 0 and _inside(spot, si) and _inside(a.spot_cutoff, sc))
        texture_ok = a.table_texture in self.textures or (
            a.table_texture == "procedural" and self.procedural > 0
            and surfaces.KIND_OF[a.table_surface] in self.surface_kinds)
        return (self.distractors[0] <= len(a.distractors) <= self.distractors[1]
                and texture_ok and _inside(h * 360.0, th) and _inside(s, ts) and _inside(v, tv)
                and _inside(gain, li) and _inside(temp, lt) and _inside(az, la) and _inside(el, le)
                and (fill == 0.0 or _inside(fill, tuple((lo, hi + tol) for lo, hi in self.fill))) and spot_ok
                and _inside(float(np.linalg.norm(a.camera_offset)), cs)
                and all(_inside(abs(x), ct) for x in a.camera_rotation) and _inside(abs(a.fovy_offset), fc))


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / max(np.linalg.norm(v), 1e-9)


TRAIN = AppearanceDistribution("train")
# The surfaces `train` had when the held-out suites were defined. The light and camera suites keep
# them, so a suite stays the same benchmark (the same look per seed) when `train` gains surfaces.
_FIRST_SURFACES = ("flat", "checker")
DISTRIBUTIONS: dict[str, AppearanceDistribution] = {
    "nominal": AppearanceDistribution("nominal", fixed=Appearance()),
    "train": TRAIN,
    # `train` and, in half of the episodes, a spot light whose pool falls off across the table. Tried
    # for the shipped encoder and not kept (docs/appearance.md), so `train` draws none.
    "train_spot": dataclasses.replace(TRAIN, name="train_spot", spot=0.5),
    # `train` and, in half of the episodes, one of the 48 structured procedural table surfaces
    # instead (boards, tiles, stripes, cloth, patches, tape marks: sim/surfaces.py), none a held-out kind.
    "train_surfaces": dataclasses.replace(TRAIN, name="train_surfaces", procedural=0.5),
    # The same with soft stains (`clouds`) only: smooth brightness changes across the table, the
    # nearest training gets to the held-out `gradient` without drawing it.
    "train_clouds": dataclasses.replace(TRAIN, name="train_clouds", procedural=0.5, surface_kinds=("clouds",)),
    # Another table: surface kinds never trained on and hues between the training ones, away from
    # the red / green / blue of the task objects (yellow-olive, violet). A lab's own table, a cloth.
    "heldout_table": dataclasses.replace(TRAIN, name="heldout_table", textures=("gradient", "noise"),
                                         table_hue=((52.0, 75.0), (255.0, 290.0))),
    # Another light: dimmer or brighter than anything trained on and a warmer / cooler colour, as a
    # lab's light changes through the day (daylight, warm bulbs, one lamp off).
    "heldout_light": dataclasses.replace(TRAIN, name="heldout_light", textures=_FIRST_SURFACES,
                                         light_intensity=((0.4, 0.6), (1.45, 1.7)),
                                         light_temperature=((-0.8, -0.45), (0.45, 0.8))),
    # A bumped tripod: the scene camera moved 3-5 cm and turned 3-5 degrees, its zoom changed 3-5.
    "heldout_camera": dataclasses.replace(TRAIN, name="heldout_camera", textures=_FIRST_SURFACES,
                                          camera_shift=((0.03, 0.05),),
                                          camera_turn=((3.0, 5.0),), fovy_change=((3.0, 5.0),)),
}
HELDOUT = tuple(name for name in DISTRIBUTIONS if name.startswith("heldout_"))


def distribution(name: str) -> AppearanceDistribution:
    if name not in DISTRIBUTIONS:
        raise ValueError(f"appearance {name!r}: expected one of {', '.join(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[name]


def draw(name: str, seed: int) -> Appearance:
    """The appearance of episode `seed` under distribution `name`."""
    return distribution(name).draw(seed)


@dataclass
class SceneHandles:
    """Model indices `apply` writes to (looked up once per model)."""

    table: int
    floor: int
    backdrop: int
    key_light: int
    fill_light: int
    spot_light: int
    camera: int
    camera_pos: np.ndarray
    camera_quat: np.ndarray
    camera_fovy: float
    materials: dict[str, int]  # surface -> material ("procedural_K" for surface K of the bank)
    object_geoms: dict[str, list[int]] = field(default_factory=dict)  # cube / target / bin -> geoms
    distractor_bodies: list[int] = field(default_factory=list)  # one per slot
    distractor_geoms: list[dict[str, int]] = field(default_factory=list)  # per slot: shape -> geom


def handles(model) -> SceneHandles:
    from avdp_ros.sim import scene

    cam = model.camera("camera").id
    mats = {t: (model.mat(f"table_{t}").id if t != "flat" else -1) for t in TEXTURES if t != "procedural"}
    mats.update({f"procedural_{k}": model.mat(scene.surface_material(k)).id for k in range(surfaces.COUNT)})
    objects: dict[str, list[int]] = {"cube": [], "target": [], "bin": []}
    for g in range(model.ngeom):
        name = model.geom(g).name
        for key in objects:
            if name.startswith(key):
                objects[key].append(g)
    slots = range(MAX_DISTRACTORS)
    return SceneHandles(model.geom(scene.TABLE_GEOM).id, model.geom("floor").id, model.geom(scene.BACKDROP_GEOM).id,
                        model.light("key").id, model.light("fill").id, model.light("spot").id, cam,
                        model.cam_pos[cam].copy(), model.cam_quat[cam].copy(), float(model.cam_fovy[cam]), mats,
                        objects,
                        [model.body(scene.distractor_name(k)).id for k in slots],
                        [{shape: model.geom(scene.distractor_name(k, shape)).id for shape in SHAPES} for k in slots])


def _show(model, geom: int, visible: bool, collide: bool = False) -> None:
    # Hidden = a geom group the renderer does not draw (like the TCP site) and no contacts.
    model.geom_group[geom] = 0 if visible else 4
    model.geom_contype[geom] = model.geom_conaffinity[geom] = int(visible and collide)


def apply(model, h: SceneHandles, a: Appearance) -> None:
    """Write `a` into the model; then mj_resetData (it moves the distractors from body_pos into
    mocap_pos) and mj_forward (camera and light poses), as `PandaSim.reset` does."""
    import mujoco

    from avdp_ros.sim import scene

    model.geom_rgba[h.table, :3] = a.table_rgb
    texture = f"procedural_{a.table_surface}" if a.table_texture == "procedural" else a.table_texture
    model.geom_matid[h.table] = h.materials[texture]
    if texture != "flat":
        model.mat_rgba[h.materials[texture], :3] = a.table_rgb
    model.geom_rgba[h.floor, :3] = a.floor_rgb
    _show(model, h.backdrop, max(a.backdrop_rgb) > 0)
    model.geom_rgba[h.backdrop, :3] = a.backdrop_rgb
    for k, (body, geoms) in enumerate(zip(h.distractor_bodies, h.distractor_geoms)):
        item = a.distractors[k] if k < len(a.distractors) else None
        for shape, g in geoms.items():
            _show(model, g, item is not None and item.shape == shape, item is not None and item.collide)
        # MuJoCo prunes body pairs by the OR of their geoms' contact bits, computed at compile time
        model.body_contype[body] = model.body_conaffinity[body] = int(item is not None and item.collide)
        if item is not None:
            model.geom_rgba[geoms[item.shape], :3] = item.rgb
            # Mocap bodies: mj_resetData copies body_pos / body_quat into data.mocap_pos / mocap_quat.
            model.body_pos[body] = (*item.xy, 0.0)
            yaw = math.radians(item.yaw)
            model.body_quat[body] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
    model.light_dir[h.key_light] = a.light_dir
    model.light_diffuse[h.key_light] = a.light_rgb
    model.light_diffuse[h.fill_light] = a.fill_rgb
    model.light_active[h.fill_light] = int(max(a.fill_rgb) > 0)
    model.light_diffuse[h.spot_light] = a.spot_rgb
    model.light_active[h.spot_light] = int(max(a.spot_rgb) > 0)
    model.light_pos[h.spot_light] = (*a.spot_xy, scene.SPOT_HEIGHT)  # the pose mj_forward computes from
    model.light_cutoff[h.spot_light] = a.spot_cutoff
    model.vis.headlight.ambient[:] = a.ambient_rgb
    model.vis.headlight.diffuse[:] = a.headlight_rgb
    for key, rgb in (("cube", a.cube_rgb), ("target", a.target_rgb), ("bin", a.bin_rgb)):
        for g in h.object_geoms.get(key, []):
            model.geom_rgba[g, :3] = rgb
    model.cam_pos[h.camera] = h.camera_pos + np.asarray(a.camera_offset)
    # yaw / pitch / roll about the camera's own axes (MuJoCo cameras look along their -z)
    turn = np.zeros(4)
    yaw, pitch, roll = (math.radians(x) for x in a.camera_rotation)
    mujoco.mju_euler2Quat(turn, np.array([pitch, yaw, roll]), "xyz")
    quat = np.zeros(4)
    mujoco.mju_mulQuat(quat, h.camera_quat, turn)
    model.cam_quat[h.camera] = quat
    model.cam_fovy[h.camera] = h.camera_fovy + a.fovy_offset
