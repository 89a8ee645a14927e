"""robustbench_zs: a benchmark for adversarially robust zero-shot CLIP.

Public API::

    from robustbench_zs import create_classifier, evaluate, load_dataset, list_methods, list_datasets, list_attacks
"""

__version__ = "0.1.0"

from .api import create_classifier, evaluate, list_attacks, list_datasets, list_methods, load_dataset  # noqa: E402

__all__ = [
    "__version__",
    "create_classifier",
    "evaluate",
    "list_attacks",
    "list_datasets",
    "list_methods",
    "load_dataset",
]
