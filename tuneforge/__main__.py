"""Allows ``python -m tuneforge`` (and ``accelerate launch -m tuneforge``)."""

from tuneforge.cli import main

raise SystemExit(main())
