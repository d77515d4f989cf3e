"""The one training loop (``loop.py``) and what it runs on: optimizer and schedule (``optim.py``), runtime
(``runtime.py``), checkpoints and exact resume (``checkpoint.py``, ``resume.py``), DDP (``distributed.py``),
metrics logs and trackers (``tracking.py``), distillation (``distill.py``, ``distill_image.py``), the frozen-prefix
activation cache (``activation_cache.py``) and the full check of a job before weights load (``validate.py``)."""
