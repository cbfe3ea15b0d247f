"""The benchmark's own virtualenv with pipecat-ai, for side-by-side runs (never a dependency of the gateway)."""
from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv-pipecat"
REQUIREMENTS = ["pipecat-ai[websocket]==1.14.0", "fastapi", "uvicorn", "numpy"]


def pipecat_python() -> str:
    """Path of the venv's python, creating the venv and installing pipecat from PyPI on first use."""
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {VENV} with {' '.join(REQUIREMENTS)} (first run only)", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    probe = subprocess.run([str(py), "-c", "import pipecat.serializers.twilio, fastapi, uvicorn"],
                           capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return str(py)


def pipecat_version(py: str) -> str:
    out = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('pipecat-ai'))"],
                         capture_output=True, text=True)
    return out.stdout.strip()
