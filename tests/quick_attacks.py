"""AutoAttack settings for the tests that are about wiring, not strength (the ``quick_standard`` fixture of
``conftest.py`` patches them into ``STANDARD``, so the registry path and the evaluator use them too)."""

QUICK = {
    "apgd-ce": {"n_iter": 10},
    "apgd-t": {"n_iter": 10, "n_target_classes": 2},
    "fab-t": {"n_iter": 10, "n_target_classes": 2},
    "square": {"n_queries": 20},
}
