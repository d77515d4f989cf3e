"""The applications built on :mod:`tuneforge.core`, one per command family: compare, plan, search, export and
serve, doctor, report, runs and the data tools. They import :mod:`tuneforge.core` and :mod:`tuneforge.base`,
never :mod:`tuneforge.cli`."""
