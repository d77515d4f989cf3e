"""Training: the loop (``loop.py``), optimizer and schedule (``optim.py``), runtime set-up (``runtime.py``)."""
