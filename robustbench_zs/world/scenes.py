"""A procedural image-caption world: 32x32 scenes of coloured shapes on textured backgrounds, and their captions.

Every scene has attributes on six axes, each a small closed vocabulary:

- ``shape`` (:data:`SHAPES`), ``colour`` (:data:`COLOURS`), ``size`` (:data:`SIZES`), ``position`` (:data:`POSITIONS`:
  the centre or a corner), ``count`` (:data:`COUNTS`: one, two or three identical objects) and background
  ``texture`` (:data:`TEXTURES`).

A scene holds one object (then it has a size and a position) or several identical small ones at random places
(then its position is ``scattered``). :func:`render` draws a batch of scenes as uint8 arrays (N, 3, 32, 32), all at
once with numpy, so generating never dominates training (tens of thousands of images per second on one core). Every
random number comes from a ``numpy.random.Generator`` the caller seeds, so a (seed, index) pair always gives the same
image, on every machine.

:data:`HELD_OUT_PAIRS` are colour-shape combinations that never appear in pre-training (:func:`sample_scenes` with
``held_out=False`` never draws them): the ``world-composition`` task measures whether the model composes colour and
shape words it only saw apart. :func:`captions` writes one caption per scene from a small grammar with several
templates, each naming a random subset of the scene's attributes, so every attribute is learned on its own and in
company.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Side of every image, in pixels.
SIZE = 32

#: Object colours (RGB): eight hues far from each other and from the grey backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 70, 225),
    "yellow": (235, 215, 30),
    "purple": (140, 50, 190),
    "orange": (245, 135, 20),
    "cyan": (40, 205, 215),
    "pink": (245, 120, 190),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
#: Plurals of the shape words, as captions and prompts write them.
PLURALS = {s: s + "es" if s == "cross" else s + "s" for s in SHAPES}
#: Object radius in pixels per size word (several objects in one scene are always small).
SIZES = {"small": 4.5, "large": 9.0}
#: Centre of a single object per position word; ``scattered`` is where several objects lie.
POSITIONS: dict[str, tuple[float, float]] = {
    "centre": (15.5, 15.5),
    "top left": (8.5, 8.5),
    "top right": (8.5, 22.5),
    "bottom left": (22.5, 8.5),
    "bottom right": (22.5, 22.5),
}
COUNTS = ("one", "two", "three")
TEXTURES = ("plain", "striped", "dotted", "checkered")

#: Colour-shape pairs never drawn in pre-training: (colour index + shape index) % 3 == 0 leaves each colour two or
#: three held-out shapes and each shape two or three held-out colours, so no single word gives a pair away.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES) if (ci + si) % 3 == 0
)


@dataclass(frozen=True)
class Scenes:
    """Attributes of N scenes, as index arrays into the vocabularies above.

    Attributes:
        shape, colour, texture: (N,) indices into :data:`SHAPES`, :data:`COLOURS`, :data:`TEXTURES`.
        count: (N,) number of objects, 1..3.
        size: (N,) index into :data:`SIZES` (``small`` whenever count > 1).
        position: (N,) index into :data:`POSITIONS`, or -1 when the objects are scattered (count > 1).
        centres: (N, 3, 2) object centres (row, column) in pixels; rows beyond ``count`` are unused.
        jitter: (N, 3) per-image colour jitter of the object (RGB offsets, -12..12).
        phase: (N, 2) texture offsets in pixels.
        shade: (N,) background grey level.
    """

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    position: np.ndarray
    count: np.ndarray
    texture: np.ndarray
    centres: np.ndarray
    jitter: np.ndarray
    phase: np.ndarray
    shade: np.ndarray

    def __len__(self) -> int:
        return len(self.shape)

    def subset(self, idx: np.ndarray) -> Scenes:
        return Scenes(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})


#: Candidate centres for scattered objects (a 3x3 grid with a little jitter keeps small objects apart).
_GRID = np.array([(r, c) for r in (5.5, 15.5, 25.5) for c in (5.5, 15.5, 25.5)])


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    *,
    shapes: np.ndarray | None = None,
    colours: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    textures: np.ndarray | None = None,
    held_out: bool = True,
    multi: float = 0.3,
) -> Scenes:
    """Draw ``n`` scenes. Attributes given as arrays (n,) are used as they are; the others are drawn uniformly.

    Args:
        rng: the only source of randomness.
        counts: 1..3 per scene; when not given, a scene has several objects with probability ``multi`` (unless its
            size or position is given, which only single objects have).
        held_out: whether :data:`HELD_OUT_PAIRS` may be drawn (False for pre-training: drawn colour-shape pairs
            that are held out are redrawn).
    """
    n_shapes, n_colours = len(SHAPES), len(COLOURS)
    shape = rng.integers(0, n_shapes, n) if shapes is None else np.asarray(shapes, dtype=np.int64)
    colour = rng.integers(0, n_colours, n) if colours is None else np.asarray(colours, dtype=np.int64)
    if not held_out:
        banned = np.zeros((n_colours, n_shapes), dtype=bool)
        for c, s in HELD_OUT_PAIRS:
            banned[list(COLOURS).index(c), SHAPES.index(s)] = True
        for _ in range(64):  # redraw the free attribute of banned pairs (a few rounds leave none)
            bad = banned[colour, shape]
            if not bad.any():
                break
            if colours is None:
                colour[bad] = rng.integers(0, n_colours, int(bad.sum()))
            elif shapes is None:
                shape[bad] = rng.integers(0, n_shapes, int(bad.sum()))
            else:
                raise ValueError("held_out=False with both shapes and colours given: a held-out pair was asked for")
        if banned[colour, shape].any():
            raise RuntimeError("could not draw scenes outside the held-out pairs")
    if counts is None:
        single_only = sizes is not None or positions is not None
        count = np.where(rng.random(n) < (0.0 if single_only else multi), rng.integers(2, 4, n), 1)
    else:
        count = np.asarray(counts, dtype=np.int64)
    single = count == 1
    size = rng.integers(0, len(SIZES), n) if sizes is None else np.asarray(sizes, dtype=np.int64)
    size = np.where(single, size, 0)
    position = rng.integers(0, len(POSITIONS), n) if positions is None else np.asarray(positions, dtype=np.int64)
    position = np.where(single, position, -1)
    texture = rng.integers(0, len(TEXTURES), n) if textures is None else np.asarray(textures, dtype=np.int64)

    centres = np.zeros((n, 3, 2))
    anchor = np.array(list(POSITIONS.values()))
    centres[:, 0] = anchor[np.clip(position, 0, None)] + rng.uniform(-1.0, 1.0, (n, 2))
    grid_pick = np.argsort(rng.random((n, len(_GRID))), axis=1)[:, :3]  # three distinct grid cells per scene
    scattered = _GRID[grid_pick] + rng.uniform(-0.5, 0.5, (n, 3, 2))
    centres[~single] = scattered[~single]
    return Scenes(
        shape=shape,
        colour=colour,
        size=size,
        position=position,
        count=count,
        texture=texture,
        centres=centres,
        jitter=rng.integers(-12, 13, (n, 3)),
        phase=rng.integers(0, 8, (n, 2)),
        shade=rng.integers(105, 150, n),
    )


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The pixels of ``shape`` of radius ``r`` at offsets (dy, dx) from its centre (arrays broadcast together)."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= r * 0.8
    if shape == "triangle":  # apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.62)
    if shape == "cross":
        ax, ay, arm = np.abs(dx), np.abs(dy), r * 0.3
        return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (r * 0.55) ** 2)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.05
    raise ValueError(f"unknown shape {shape!r}")


def _object_masks(scenes: Scenes) -> np.ndarray:
    """(N, 32, 32) bool: the pixels of every scene's objects (each shape drawn only on its own scenes)."""
    n = len(scenes)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    radius = np.array(list(SIZES.values()), dtype=np.float32)[scenes.size]
    out = np.zeros((n, SIZE, SIZE), dtype=bool)
    for si, shape in enumerate(SHAPES):
        for k in range(3):
            idx = np.flatnonzero((scenes.shape == si) & (scenes.count > k))
            if len(idx) == 0:
                continue
            centre = scenes.centres[idx, k].astype(np.float32)
            dy = rows[None] - centre[:, 0, None, None]
            dx = cols[None] - centre[:, 1, None, None]
            out[idx] |= _shape_mask(shape, dy, dx, radius[idx, None, None])
    return out


def _backgrounds(scenes: Scenes) -> np.ndarray:
    """(N, 32, 32) uint8 grey levels of the textured backgrounds."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    r = rows[None] + scenes.phase[:, 0][:, None, None]
    c = cols[None] + scenes.phase[:, 1][:, None, None]
    patterns = np.stack(
        [
            np.zeros_like(r, dtype=bool),  # plain
            (r // 3) % 2 == 0,  # striped: horizontal bands of 3 px
            ((r % 5) < 2) & ((c % 5) < 2),  # dotted: 2x2 dots every 5 px
            ((r // 4) + (c // 4)) % 2 == 0,  # checkered: 4 px squares
        ]
    )  # (textures, N, H, W)
    on = patterns[scenes.texture, np.arange(len(scenes))]
    base = scenes.shade[:, None, None].astype(np.int64)
    return np.where(on, base + 55, base - 35).clip(0, 255).astype(np.uint8)


def render(scenes: Scenes) -> np.ndarray:
    """uint8 images (N, 3, 32, 32) of ``scenes``: the textured grey background, then the objects in their colour."""
    background = _backgrounds(scenes)
    mask = _object_masks(scenes)
    rgb = np.array(list(COLOURS.values()), dtype=np.int64)[scenes.colour] + scenes.jitter  # (N, 3)
    rgb = rgb.clip(0, 255).astype(np.uint8)
    img = np.repeat(background[:, None], 3, axis=1)
    img = np.where(mask[:, None], rgb[:, :, None, None], img)
    return np.ascontiguousarray(img, dtype=np.uint8)


# --- captions ---------------------------------------------------------------------------------------------------

_POSITION_PHRASES = {
    "centre": "in the centre",
    "top left": "at the top left",
    "top right": "at the top right",
    "bottom left": "at the bottom left",
    "bottom right": "at the bottom right",
}
_TEXTURE_PHRASES = {
    "plain": "on a plain background",
    "striped": "on a striped background",
    "dotted": "on a dotted background",
    "checkered": "on a checkered background",
}
_OPENINGS = ("", "a photo of ", "a picture of ", "an image of ", "this is a photo of ", "there is ")  # "there are"


def noun_phrase(count: int, size: str | None, colour: str | None, shape: str | None) -> str:
    """``a large red circle``, ``two blue crosses``, ``a shape``: the object words of a caption or prompt."""
    words = [w for w in (size, colour) if w]
    if count == 1:
        head = shape or "shape"
        words.append(head)
        article = "an" if words[0][0] in "aeiou" else "a"
        return f"{article} {' '.join(words)}"
    words.append(PLURALS[shape] if shape else "shapes")
    return f"{COUNTS[count - 1]} {' '.join(words)}"


def captions(scenes: Scenes, rng: np.random.Generator, focus: np.ndarray | None = None) -> list[str]:
    """One caption per scene: an opening, the objects with a random subset of their attributes, and maybe their
    position and background. Shape and colour are named more often than the other attributes, every attribute
    alone and in company.

    Args:
        focus: per scene, an index into :data:`AXES` whose attribute the caption always names (-1: none), so that the
            two scenes of a minimal pair (:func:`sample_pairs`) never get the same caption.
    """
    colours, sizes = list(COLOURS), list(SIZES)
    positions = list(POSITIONS)
    out = []
    draws = rng.random((len(scenes), 6))
    openings = rng.integers(0, len(_OPENINGS), len(scenes))
    force = np.full(len(scenes), -1) if focus is None else np.asarray(focus)
    for i in range(len(scenes)):
        count = int(scenes.count[i])
        p = draws[i]
        axis = AXES[force[i]] if force[i] >= 0 else None
        shape = SHAPES[scenes.shape[i]] if p[0] < 0.8 or axis == "shape" else None
        colour = colours[scenes.colour[i]] if p[1] < 0.8 or axis == "colour" else None
        size = sizes[scenes.size[i]] if count == 1 and (p[2] < 0.5 or axis == "size") else None
        if count > 1 and p[3] >= 0.9 and axis != "count":  # several objects named as a group without their number
            text = "some " + " ".join(w for w in (colour, PLURALS[shape] if shape else "shapes") if w)
        else:
            text = noun_phrase(count, size, colour, shape)
        if count == 1 and (p[4] < 0.5 or axis == "position"):
            text += " " + _POSITION_PHRASES[positions[scenes.position[i]]]
        if p[5] < 0.5 or axis == "texture":
            text += " " + _TEXTURE_PHRASES[TEXTURES[scenes.texture[i]]]
        opening = _OPENINGS[openings[i]]
        if opening == "there is " and not text.startswith(("a ", "an ")):
            opening = "there are "
        out.append(opening + text)
    return out


#: The axes a minimal pair can differ on (:func:`sample_pairs`), and how often each is drawn: shape and position are
#: the hardest to learn from random batches, where colour and texture already tell almost every pair apart.
AXES = ("shape", "colour", "size", "position", "count", "texture")
AXIS_WEIGHTS = (0.3, 0.1, 0.1, 0.25, 0.15, 0.1)


def sample_pairs(rng: np.random.Generator, n_pairs: int, held_out: bool = False) -> tuple[Scenes, np.ndarray]:
    """``2 * n_pairs`` scenes in minimal pairs (scenes ``2k`` and ``2k + 1``): the same on every axis but one, drawn
    per pair from :data:`AXES` with :data:`AXIS_WEIGHTS`. Returns the scenes and, per scene, its pair's axis.

    A contrastive batch of such pairs holds, for every scene, a negative that only that axis tells apart, so the
    model cannot match captions by the easy attributes alone. Pairs never use a held-out colour-shape pair unless
    ``held_out``.
    """
    n_colours, n_shapes = len(COLOURS), len(SHAPES)
    allowed = np.ones((n_colours, n_shapes), dtype=bool)
    if not held_out:
        for c, sh in HELD_OUT_PAIRS:
            allowed[list(COLOURS).index(c), SHAPES.index(sh)] = False
    axis = rng.choice(len(AXES), size=n_pairs, p=AXIS_WEIGHTS)
    name = np.array(AXES)[axis]
    # the pair's shared attributes
    pair_cs = rng.choice(np.flatnonzero(allowed.ravel()), size=n_pairs)
    colour, shape = np.divmod(pair_cs, n_shapes)
    count = np.where((name == "count") | (rng.random(n_pairs) < 0.2), rng.integers(2, 4, n_pairs), 1)
    count[(name == "size") | (name == "position")] = 1
    size = np.where(count == 1, rng.integers(0, len(SIZES), n_pairs), 0)
    position = rng.integers(0, len(POSITIONS), n_pairs)
    texture = rng.integers(0, len(TEXTURES), n_pairs)
    attrs = {"shape": shape, "colour": colour, "size": size, "position": position, "count": count, "texture": texture}
    attrs = {k: np.repeat(v, 2) for k, v in attrs.items()}
    # the second scene of each pair takes another value on the pair's axis
    second = np.arange(1, 2 * n_pairs, 2)
    for k in range(n_pairs):
        i, a = second[k], name[k]
        if a == "shape":
            options = [v for v in np.flatnonzero(allowed[colour[k]]) if v != shape[k]]
        elif a == "colour":
            options = [v for v in np.flatnonzero(allowed[:, shape[k]]) if v != colour[k]]
        elif a == "count":
            options = [v for v in (1, 2, 3) if v != count[k]]
        else:
            n_values = {"size": len(SIZES), "position": len(POSITIONS), "texture": len(TEXTURES)}[a]
            options = [v for v in range(n_values) if v != attrs[a][i]]
        attrs[a][i] = options[rng.integers(0, len(options))]
    small = attrs["count"] > 1
    attrs["size"][small] = 0
    scenes = sample_scenes(
        rng,
        2 * n_pairs,
        shapes=attrs["shape"],
        colours=attrs["colour"],
        sizes=attrs["size"],
        positions=attrs["position"],
        counts=attrs["count"],
        textures=attrs["texture"],
    )
    return scenes, np.repeat(axis, 2)
