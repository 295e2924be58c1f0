"""Shared test helpers (import as ``from helpers import run_cli``)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the real Manhattan map as shipped with the package (never a folder outside the repository)
MANHATTAN = ROOT / "nextlat_probe" / "maps" / "manhattan_streets.json.gz"


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` with this interpreter; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
