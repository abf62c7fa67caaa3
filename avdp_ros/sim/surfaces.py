"""Procedural table surfaces: a fixed bank of grey-scale textures drawn with numpy.

`scene.py` compiles every surface of the bank into the model as its own texture and material, so
an episode picks one by index (`Appearance.table_surface`) and pays nothing at render time: no
texture upload per episode, no GL context to reach from the thread that resets. The bank is part
of the scene (each surface drawn from its own fixed seed), so a recorded index re-renders exactly.

The kinds are the surfaces of real work tables and what lies on them, each drawn with random
sizes, angles and contrasts. Six are structured: boards, tiles and bricks, stripes, woven cloth,
hard-edged patches, tape and paper. The seventh, `clouds`, is smooth: several soft light and dark
stains at random places (weathered wood, stone, a window's uneven light), the kind closest to the
held-out `gradient` (one lit spot at the table's centre). No kind is that radial falloff or
per-pixel speckle (the held-out `noise`): sim/appearance.py's held-out suites draw those, and
training never does.

The bank only ever grows at its end, so a recorded index keeps its look.
"""

from __future__ import annotations

import functools

import numpy as np

SIZE = 256  # px per side, over the whole table top (1.3 x 1.2 m): about 5 mm a pixel
KINDS = ("boards", "tiles", "stripes", "weave", "patches", "marks", "clouds")
STRUCTURED = KINDS[:6]
# The kind of each surface, by index: the first 48 take the six structured kinds in turn, then 16
# clouds (added later; appended, so the first 48 kept their looks). Each is 192 KiB in the model.
KIND_OF = tuple(STRUCTURED[k % 6] for k in range(48)) + ("clouds",) * 16
COUNT = len(KIND_OF)
_STREAM = 0x73757266  # "surf"


def surface(index: int, size: int = SIZE) -> np.ndarray:
    """Surface `index` of the bank: (size, size, 3) uint8, grey (the episode's table colour tints
    it), values within 0.3-1.0 of full scale. Deterministic in `index`."""
    if not (isinstance(index, (int, np.integer)) and 0 <= index < COUNT):
        raise ValueError(f"surface index {index!r}: expected an integer in 0..{COUNT - 1}")
    rng = np.random.default_rng([_STREAM, int(index)])
    v = _DRAW[KIND_OF[int(index)]](rng, size)
    if rng.random() < 0.5:  # either way round on the table
        v = v.T
    return np.repeat((np.clip(v, 0.3, 1.0) * 255).astype(np.uint8)[..., None], 3, axis=2)


@functools.lru_cache(maxsize=1)
def bank() -> tuple[np.ndarray, ...]:
    """Every surface, drawn once per process (about 0.2 s)."""
    return tuple(surface(k) for k in range(COUNT))


def _boards(rng: np.random.Generator, size: int) -> np.ndarray:
    """Parallel boards of random widths and shades, with grain along them, butt joints and seams."""
    n = int(rng.integers(3, 15))
    edges = np.sort(np.r_[0, rng.choice(np.arange(8, size - 8), n - 1, replace=False), size])
    lo, seam = rng.uniform(0.5, 0.85), rng.uniform(0.3, 0.55)
    along = np.arange(size)[:, None]
    v = np.zeros((size, size))
    for a, b in zip(edges[:-1], edges[1:]):
        across = np.arange(b - a)[None]
        grain = rng.uniform(0.01, 0.07) * np.sin(along * rng.uniform(0.03, 0.2) + across * rng.uniform(0.3, 1.5)
                                                  + rng.uniform(0, 6.3))
        v[:, a:b] = rng.uniform(lo, 1.0) + grain
        for joint in rng.integers(0, size, int(rng.integers(0, 3))):
            v[joint:joint + 2, a:b] = seam
        v[:, a:a + int(rng.integers(1, 4))] = seam
    return v


def _tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rectangular tiles or bricks (rows offset by half a tile, or not) with grout lines."""
    w, h = int(rng.integers(14, 90)), int(rng.integers(14, 90))
    offset = rng.random() < 0.5
    grout, shade, jitter = int(rng.integers(1, 5)), rng.uniform(0.3, 0.65), rng.uniform(0.0, 0.15)
    base = rng.uniform(0.75, 1.0)
    y, x = np.mgrid[0:size, 0:size]
    row = y // h
    along = x + (row % 2) * (w // 2 if offset else 0)  # odd rows shifted by half a tile (bricks)
    cells = base - jitter * rng.random((size // h + 2, size // w + 3))
    v = cells[row, along // w]
    line = ((y % h) < grout) | ((along % w) < grout)
    v[line] = shade
    return v


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Straight stripes at any angle, hard-edged or soft, of random period and width."""
    period, duty = rng.uniform(8, 64), rng.uniform(0.2, 0.7)
    angle, contrast = rng.uniform(0, np.pi), rng.uniform(0.15, 0.5)
    y, x = np.mgrid[0:size, 0:size]
    phase = ((x * np.cos(angle) + y * np.sin(angle)) / period) % 1.0
    if rng.random() < 0.5:
        band = (phase < duty).astype(float)
    else:
        band = 0.5 + 0.5 * np.cos(2 * np.pi * phase)
    return 1.0 - contrast * band


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    """Woven cloth: a fine cross-hatch, sometimes under a coarse plaid."""
    period, contrast = rng.uniform(3, 9), rng.uniform(0.08, 0.3)
    y, x = np.mgrid[0:size, 0:size]
    warp = np.sin(2 * np.pi * x / period) > 0
    weft = np.sin(2 * np.pi * y / period) > 0
    v = 1.0 - contrast * (warp ^ weft)
    if rng.random() < 0.5:
        band = rng.uniform(20, 70)
        plaid = ((x % band) < band / 3) | ((y % band) < band / 3)
        v = v - rng.uniform(0.1, 0.3) * plaid
    return v


def _patches(rng: np.random.Generator, size: int) -> np.ndarray:
    """Hard-edged patches of two to four shades (stone, camouflage cloth, stains): a coarse random
    field cut into levels, so shade changes in steps, never as a smooth falloff."""
    cells = int(rng.integers(3, 10))
    coarse = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i, f = np.minimum(t.astype(int), cells - 1), t - np.minimum(t.astype(int), cells - 1)
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    field = rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]
    levels = int(rng.integers(2, 5))
    cuts = np.quantile(field, np.linspace(0, 1, levels + 1)[1:-1])
    # each level at least 0.1 from the next, so no surface comes out nearly plain
    shades = rng.permutation(rng.uniform(0.8, 1.0) - np.cumsum(np.r_[0.0, rng.uniform(0.1, 0.2, levels - 1)]))
    return shades[np.digitize(field, cuts)]


def _marks(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain top with tape strips, paper sheets and scratches on it, lighter or darker."""
    v = np.full((size, size), rng.uniform(0.6, 1.0))
    for _ in range(int(rng.integers(3, 12))):
        shade = rng.uniform(0.3, 1.0)
        if rng.random() < 0.4:  # a sheet of paper, a mat
            h, w = rng.integers(20, 90, 2)
        else:  # a strip of tape, a scratch
            h, w = (int(rng.integers(2, 8)), int(rng.integers(30, size))) if rng.random() < 0.5 else \
                (int(rng.integers(30, size)), int(rng.integers(2, 8)))
        y0, x0 = rng.integers(0, size, 2)
        v[y0:y0 + h, x0:x0 + w] = shade
    return v


def _clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft stains: 3-8 Gaussian blobs, lighter or darker, 10-45% of the table across, at random
    places, the whole stretched over a random range of shades (never clipped flat). Never one
    blob at the centre alone (that is the held-out `gradient`)."""
    y, x = np.mgrid[0:size, 0:size] / size
    v = np.zeros((size, size))
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, 1, 2)
        width = rng.uniform(0.1, 0.45)
        v += rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2)
                                                                     / (2 * width ** 2))
    lo, hi = rng.uniform(0.35, 0.65), rng.uniform(0.85, 1.0)
    return lo + (hi - lo) * (v - v.min()) / max(np.ptp(v), 1e-9)


_DRAW = {"boards": _boards, "tiles": _tiles, "stripes": _stripes, "weave": _weave, "patches": _patches,
         "marks": _marks, "clouds": _clouds}
