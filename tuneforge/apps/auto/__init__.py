"""``tuneforge auto RECIPE --minutes M``: the method and settings chosen within a time budget (docs/auto.md).

``datafacts`` reads the data (task, labels, lengths), ``budget`` keeps the time, ``study`` runs the budgeted
Optuna search (``apps.search``'s study, a conditional space), ``session`` ties the steps together and sizes the
finishing run, ``finish`` averages the last epochs' weights when that validates better, ``writeup`` writes
``auto.md`` and ``auto.json``. The finishing run is ``tuneforge train``'s, into the same folder.
"""
