"""Hyper-parameter search: ``tuneforge search RECIPE.yaml --space SPACE.yaml --trials N``.

``space`` reads the space file, ``study`` runs the Optuna study (one trial = one training run, pruned on the
per-epoch validation metric), ``report`` writes the trials table, ``best.yaml`` and the importance plot.
See docs/search.md.
"""

from tuneforge.apps.search.space import Parameter, load_space, parse_space

__all__ = ["Parameter", "load_space", "parse_space"]
