"""The world's tasks (``robustbench_zs.world.tasks``) as registered datasets: generated in memory, deterministic.

They play the role of the 16 evaluation datasets (and ``world-train`` TinyImageNet's) for the world model
(``--arch zsbench-world --pretrained world``): every part of the tool (run, train, leaderboard, compare, figures,
reproduce) takes them like any other dataset. Prompts: ``paper`` is one template ("a photo of {}.") as the paper's,
``ensemble`` the caption grammar's five openings; class names are noun phrases of the grammar.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from ..errors import ZSBenchError
from ..world.tasks import ENSEMBLE_TEMPLATES, PAPER_TEMPLATE, TASKS, generate
from .spec import DATASETS, DatasetSpec, TensorImageDataset


@cache
def _split(task_id: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = generate(TASKS[task_id], split)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _loader(task_id: str):
    def load(data_root: Path | None, split: str) -> TensorImageDataset:
        task = TASKS[task_id]
        if split not in dict(task.splits):
            raise ZSBenchError(f"{task.name} has no split {split!r}; splits: {', '.join(dict(task.splits))}")
        images, labels = _split(task_id, split)
        return TensorImageDataset(images.copy(), labels.copy(), list(task.classnames), root=None)

    return load


for _id, _task in TASKS.items():
    DATASETS.add(
        _id,
        DatasetSpec(
            id=_id,
            name=_task.name,
            num_classes=len(_task.classnames),
            splits=tuple(dict(_task.splits)),
            eval_split="test",
            templates=(PAPER_TEMPLATE,),
            classnames=_task.classnames,
            layout="(generated in memory from robustbench_zs.world; no files)",
            source=f"procedural world: {_task.axis} ({', '.join(f'{s} {n:,}' for s, n in _task.splits)} images)",
            loader=_loader(_id),
            needs_root=False,
            native_size=(32, 32),
            paper_preprocess="native",
            own_ensemble_templates=ENSEMBLE_TEMPLATES,
        ),
    )
