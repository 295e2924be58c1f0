"""``make lab``: the notebooks extra is installed into the venv only when missing (the
set-up stamp names the installed extras), the kernel is registered, JupyterLab starts on
notebooks/. Checked with a stand-in interpreter that records what it is asked to do."""
import os
import subprocess
from pathlib import Path

from helpers import ROOT


def _fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose python logs its arguments and succeeds (``import torch`` included)."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\nexit 0\n')
    py.chmod(0o755)
    return venv, log


def _setup(venv: Path, extras: str) -> list[str]:
    res = subprocess.run(["bash", "scripts/setup.sh", extras], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NEXTLAT_VENV": str(venv)})
    assert res.returncode == 0, res.stderr
    return sorted(p.name.rsplit("_", 1)[1] for p in venv.glob(".nextlat_setup_*"))


def test_setup_installs_an_extra_only_when_missing(tmp_path):
    venv, log = _fake_venv(tmp_path)
    assert _setup(venv, "dev") == ["dev"]
    assert "install -e .[dev]" in log.read_text()
    log.write_text("")
    assert _setup(venv, "dev,notebooks") == ["dev,notebooks"]  # make lab: adds the notebooks extra
    assert "install -e .[dev,notebooks]" in log.read_text()
    log.write_text("")
    assert _setup(venv, "dev") == ["dev,notebooks"]  # make test afterwards: nothing to do, nothing dropped
    assert _setup(venv, "dev,notebooks") == ["dev,notebooks"]  # make lab again: nothing to do
    assert log.read_text() == ""


def test_make_lab_registers_the_kernel_and_starts_jupyterlab_on_the_notebooks():
    # (run from a parent make, e.g. `make test`, make would add "Entering directory" lines)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    res = subprocess.run(["make", "--no-print-directory", "-n", "lab", "VENV=/tmp/some-venv"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    assert "NEXTLAT_VENV=/tmp/some-venv bash scripts/setup.sh dev,notebooks" in lines[0]
    assert lines[1].startswith("/tmp/some-venv/bin/python -m ipykernel install --user --name nextlat_probe")
    assert lines[2].startswith("/tmp/some-venv/bin/jupyter lab notebooks/")
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme
