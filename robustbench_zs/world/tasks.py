"""The world's downstream tasks: zero-shot classification along each axis of the scenes, and a training set.

Each task draws its scenes so that its label is the only thing its classes tell apart (a balanced, seeded test split
of :data:`TEST_SIZE` images), and names its classes with noun phrases of the caption grammar ("a red shape", "two
shapes", "a shape at the top left"), to go into templates like the real datasets' ("a photo of {}."). Class names
in the singular go with scenes of one object: every task but ``world-count`` shows a single object, of either size,
anywhere, on any background.

- ``world-colour`` (8), ``world-shape`` (6), ``world-size`` (2, single objects), ``world-count`` (3, small objects),
  ``world-position`` (5, single objects), ``world-texture`` (4): one axis each;
- ``world-composition`` (16): the colour-shape pairs held out of pre-training (``scenes.HELD_OUT_PAIRS``);
- ``world-objects`` (32): every colour-shape pair pre-training saw, the many-class task;
- ``world-train`` (24 classes, a train split of :data:`TRAIN_SIZE` images and a test split): TinyImageNet's role.
  Its labels are colour-shape pairs over six of the eight colours (never cyan or pink) and never a held-out pair, so
  fine-tuning on it shares features with every task while the tasks hold out values (two colours; every size,
  count, position and texture word) and combinations (the held-out pairs), as the real test sets hold out classes
  TinyImageNet never names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .scenes import (
    COLOURS,
    COUNTS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    Scenes,
    noun_phrase,
    render,
    sample_scenes,
)

TEST_SIZE = 1024
TRAIN_SIZE = 12288
#: The prompt of the ``paper`` prompt set (one template, as the paper's), and the ``ensemble`` set's templates: the
#: openings of the caption grammar.
PAPER_TEMPLATE = "a photo of {}."
ENSEMBLE_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "this is a photo of {}.", "there is {}.")
#: The colours world-train names (the first six): cyan and pink are never a fine-tuning label.
TRAIN_COLOURS = tuple(list(COLOURS)[:6])

_POSITION_PHRASES = {
    "centre": "a shape in the centre",
    "top left": "a shape at the top left",
    "top right": "a shape at the top right",
    "bottom left": "a shape at the bottom left",
    "bottom right": "a shape at the bottom right",
}


@dataclass(frozen=True)
class Task:
    """One downstream task.

    Attributes:
        id: the dataset id (``world-colour``).
        name: display name.
        axis: what the label is (for the README and ``zsbench list datasets``).
        classnames: one noun phrase per class, label order.
        draw: ``draw(rng, labels) -> Scenes``: scenes whose attribute is the given label, the rest drawn at random.
        seed: the task's seed; split ``s`` is drawn from ``np.random.default_rng([seed, s])``.
        splits: split name -> number of images.
    """

    id: str
    name: str
    axis: str
    classnames: tuple[str, ...]
    draw: Callable[[np.random.Generator, np.ndarray], Scenes]
    seed: int
    splits: tuple[tuple[str, int], ...] = (("test", TEST_SIZE),)

    def split_size(self, split: str) -> int:
        return dict(self.splits)[split]


def _pairs(pairs: list[tuple[str, str]]) -> tuple[tuple[str, ...], Callable]:
    colours, shapes = list(COLOURS), list(SHAPES)
    cidx = np.array([colours.index(c) for c, _ in pairs])
    sidx = np.array([shapes.index(s) for _, s in pairs])

    def draw(rng: np.random.Generator, labels: np.ndarray) -> Scenes:
        return sample_scenes(rng, len(labels), colours=cidx[labels], shapes=sidx[labels], counts=np.ones_like(labels))

    names = tuple(noun_phrase(1, None, c, s) for c, s in pairs)
    return names, draw


_SEEN = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]


def _tasks() -> dict[str, Task]:
    tasks = [
        Task(
            "world-colour",
            "World: colour",
            "the objects' colour",
            tuple(noun_phrase(1, None, c, None) for c in COLOURS),
            lambda rng, y: sample_scenes(rng, len(y), colours=y, counts=np.ones_like(y)),
            seed=101,
        ),
        Task(
            "world-shape",
            "World: shape",
            "the objects' shape",
            tuple(noun_phrase(1, None, None, s) for s in SHAPES),
            lambda rng, y: sample_scenes(rng, len(y), shapes=y, counts=np.ones_like(y)),
            seed=102,
        ),
        Task(
            "world-size",
            "World: size",
            "the size of a single object",
            tuple(noun_phrase(1, s, None, None) for s in SIZES),
            lambda rng, y: sample_scenes(rng, len(y), sizes=y, counts=np.ones_like(y)),
            seed=103,
        ),
        Task(
            "world-count",
            "World: count",
            "how many small objects (one to three)",
            tuple(noun_phrase(k, None, None, None) for k in range(1, len(COUNTS) + 1)),
            lambda rng, y: sample_scenes(rng, len(y), counts=y + 1, sizes=np.zeros_like(y)),
            seed=104,
        ),
        Task(
            "world-position",
            "World: position",
            "where a single object is (centre or a corner)",
            tuple(_POSITION_PHRASES[p] for p in POSITIONS),
            lambda rng, y: sample_scenes(rng, len(y), positions=y, counts=np.ones_like(y)),
            seed=105,
        ),
        Task(
            "world-texture",
            "World: texture",
            "the background's texture",
            tuple(f"a shape on a {t} background" for t in TEXTURES),
            lambda rng, y: sample_scenes(rng, len(y), textures=y, counts=np.ones_like(y)),
            seed=106,
        ),
    ]
    names, draw = _pairs(list(HELD_OUT_PAIRS))
    tasks.append(Task("world-composition", "World: held-out pairs", "colour-shape pairs never seen in pre-training",
                      names, draw, seed=107))  # fmt: skip
    names, draw = _pairs(_SEEN)
    tasks.append(Task("world-objects", "World: objects", "every colour-shape pair seen in pre-training", names, draw,
                      seed=108))  # fmt: skip
    train_pairs = [(c, s) for c, s in _SEEN if c in TRAIN_COLOURS]
    names, draw = _pairs(train_pairs)
    tasks.append(
        Task(
            "world-train",
            "World: training set",
            "colour-shape pairs of six colours (TinyImageNet's role: fine-tuning)",
            names,
            draw,
            seed=109,
            splits=(("test", TEST_SIZE), ("train", TRAIN_SIZE)),
        )
    )
    return {t.id: t for t in tasks}


TASKS: dict[str, Task] = _tasks()
_SPLIT_IDS = {"test": 0, "train": 1}


def generate(task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 3, 32, 32) uint8 and labels (N,) of a task's split: balanced, shuffled, the same every time."""
    n = task.split_size(split)
    rng = np.random.default_rng([task.seed, _SPLIT_IDS[split]])
    labels = np.arange(n) % len(task.classnames)
    rng.shuffle(labels)

    return render(task.draw(rng, labels)), labels.astype(np.int64)
