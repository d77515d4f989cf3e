"""tuneforge: one YAML recipe in, one run folder out.

Four layers, imports pointing only down (docs/architecture.md; checked by ``lint-imports``):

- :mod:`tuneforge.base` — errors, the recipe schema, the run folder, model resolution, the integrity gate;
- :mod:`tuneforge.core` — data, methods, tasks, evaluation and the one training loop (``core.engine``);
- :mod:`tuneforge.apps` — compare, plan, search, export and serve, doctor, report, runs, generate, data tools;
- :mod:`tuneforge.cli` — the ``tuneforge`` command line.
"""

__version__ = "0.1.0"
