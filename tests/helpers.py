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


def run_in_process(module: str, argv: list, capsys) -> tuple[int, str, str]:
    """``python -m nextlat_probe.MODULE ARGV`` through ``run_main`` in this process (no torch
    import per call): (exit code, stdout, stderr stripped)."""
    import importlib

    import pytest

    from nextlat_probe.cli import run_main

    main = importlib.import_module(f"nextlat_probe.{module}").main
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err.strip()


def assert_one_line(code: int, err: str, *needles: str) -> None:
    """A refusal as promised: exit code 2 and one ``error:`` line holding every needle."""
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for needle in needles:
        assert needle in err, (needle, err)


def assert_light_help(module: str, *flags: str) -> None:
    """``python -m MODULE --help`` works and names ``flags``; building the parser imports no torch."""
    res = run_cli(module, "--help", timeout=60)
    assert res.returncode == 0 and all(f in res.stdout for f in flags), res.stdout + res.stderr
    code = f"import sys, {module} as m; m.build_parser(); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.stdout.strip() == "False", res.stderr
def edited(src, dst, edit):
    """A copy of checkpoint ``src`` at ``dst`` (folders created) after ``edit(raw dict)``."""
    import torch

    raw = torch.load(src, weights_only=True)
    edit(raw)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(raw, dst)
    return dst


def no_building(monkeypatch):
    """Building a transformer now fails the test: a refusal must come before any model."""
    from nextlat_probe.training import trainer

    def refuse(*a, **k):
        raise AssertionError("a model was built from a crafted checkpoint")

    monkeypatch.setattr("nextlat_probe.models.transformer.build_transformer", refuse)
    monkeypatch.setattr(trainer, "build_transformer", refuse)
