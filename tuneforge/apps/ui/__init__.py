"""``tuneforge ui``: a local web dashboard over a runs folder — the runs table, one run's live curves and report,
runs side by side, and a launch form that validates, plans, starts, stops and resumes ``tuneforge train``.

- :mod:`.safety`   what the server lets through: local Host headers, the token for other hosts, JSON-only
                   actions, paths confined to the runs folder and the recipe folders
- :mod:`.rundata`  reading one run folder for the pages (metrics as they grow, evaluations, files, recipe keys)
- :mod:`.launch`   the launch form turned into a recipe file and ``--set`` overrides; validation errors per field;
                   the plan's estimate
- :mod:`.processes` the ``tuneforge train`` child processes the dashboard started (stop = SIGINT, like Ctrl-C)
- :mod:`.app`      the FastAPI application (pages and JSON API) and :func:`serve_ui`, the command

The pages and their scripts are files in ``static/`` (package data): no CDN, nothing fetched from elsewhere.
"""
