"""tuneforge: one YAML recipe in, one run folder out.

The package is organised so that each concern meets the others only through small typed
interfaces: ``config`` (the recipe), ``data`` (files -> examples), ``methods`` (how a model is
made trainable), ``train`` (the loop), ``evaluate`` (metrics, plots), ``predict`` (inference
from a finished run).
"""

__version__ = "0.1.0"
