"""Data: reading tables, checking them, splitting, encoding and batching.

Meets the rest of tuneforge through :class:`~tuneforge.core.data.splits.ClassificationData`
(label names and split texts) and the loaders in :mod:`tuneforge.core.data.batching`.
"""
