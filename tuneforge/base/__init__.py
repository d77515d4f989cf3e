"""The bottom layer: what every other layer may use, which itself uses nothing of tuneforge above it.

``errors`` (UserError), ``recipe`` (the recipe schema and its messages), ``runfolder`` / ``manifest`` / ``atomic``
(the run folder: never overwritten, ``run.json``, ``manifest.json``, atomic JSON), ``models`` / ``gguf_cache``
(model aliases, local folders, hub ids), ``integrity`` (save, read back, compare: ``artifacts.json``), ``tables``
(reading data files), ``paths``, ``quiet``, ``machine``.
"""
