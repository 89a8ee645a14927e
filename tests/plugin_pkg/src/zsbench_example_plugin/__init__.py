"""An example plugin for robustbench_zs: the method ``clean_adv_mix``, the attack ``fgsm``, the dataset ``stripes``.

Nothing here is imported by robustbench_zs directly: its registries find these objects through the entry points
in ``pyproject.toml`` the first time a name is looked up.
"""
