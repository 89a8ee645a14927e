"""robustbench_zs: a benchmark for adversarially robust zero-shot CLIP.

Public API::

    from robustbench_zs import create_classifier, evaluate, load_dataset, list_methods, list_datasets, list_attacks
"""

from .api import create_classifier, evaluate, list_attacks, list_datasets, list_methods, load_dataset
from .version import __version__

__all__ = [
    "__version__",
    "create_classifier",
    "evaluate",
    "list_attacks",
    "list_datasets",
    "list_methods",
    "load_dataset",
]
