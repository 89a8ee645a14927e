"""A procedural image-caption world and a tiny CLIP pre-trained on it, shipped with the package.

- :mod:`.scenes`: the scene generator and the caption grammar;
- :mod:`.tokenizer`: the word-level tokenizer of the world's words;
- :mod:`.tasks`: the downstream tasks (registered as the ``world-*`` datasets) and the training set;
- :data:`WORLD_WEIGHTS`: the shipped weights, made by ``zsbench world pretrain``
  (:mod:`robustbench_zs.train.world_pretrain`); ``zsbench reproduce world`` is :mod:`robustbench_zs.paper.world`.
"""

from __future__ import annotations

from ..weights import PackagedWeights

#: The exact command that made the shipped weights (on one thread, as ``zsbench world pretrain`` runs by default).
PRETRAIN_COMMAND = "zsbench world pretrain --out robustbench_zs/world/zsbench-world.safetensors"

#: The world CLIP's weights: ``--arch zsbench-world --pretrained world``.
WORLD_WEIGHTS = PackagedWeights(
    file="world/zsbench-world.safetensors",
    sha256="7e1953cb778a99c42aac7ee981fbc0f517393dcbe95569dde8664b8764ec3f92",
    tokenizer="robustbench_zs.world.tokenizer:WorldTokenizer",
    command=PRETRAIN_COMMAND,
)
