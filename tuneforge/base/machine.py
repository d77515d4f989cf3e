"""Facts about this machine and this install that a run records (``manifest.json``) and ``doctor`` prints."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

from tuneforge import __version__

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "pydantic", "numpy", "scikit-learn", "safetensors",
             "onnx", "onnxruntime", "optuna", "datasets")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "tuneforge": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the tuneforge checkout (editable installs), or None."""
    folder = folder or Path(__file__).resolve().parents[2]
    if not (folder / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def cpu_model(cpuinfo: str | None = None) -> str:
    try:
        for line in (cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()).splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
