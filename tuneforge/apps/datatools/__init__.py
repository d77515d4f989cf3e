"""``tuneforge data``: look at a labelled file before training on it.

- :mod:`~tuneforge.apps.datatools.inspect`: what is in the file (labels, lengths, duplicates, conflicts,
  leakage), printed and written as ``data_report.json`` / ``data_report.html``;
- :mod:`~tuneforge.apps.datatools.clean`: a cleaned copy (empty rows, duplicates, conflicting labels) and a
  log of every change;
- :mod:`~tuneforge.apps.datatools.noise`: rows whose label is probably wrong (cross-validated predictions).
"""
