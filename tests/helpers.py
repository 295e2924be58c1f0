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


# --------------------------------------------------------------------------------------
# what a person reads: no raw metric key in any title, axis label, legend or table header
# --------------------------------------------------------------------------------------
#: short keys that are raw when they appear in lower case as words (their labels say R², MSE, KL)
_BARE_KEYS = {"r2", "mse", "kl", "n90", "n99", "d_model", "val_loss", "ce", "next_h"}


def raw_keys(text: str, keys) -> list[str]:
    """The metric ``keys`` that look like identifiers (snake_case, ``@``, ``[i]``, or one of
    ``_BARE_KEYS``) and appear in ``text`` as a word of their own."""
    import re

    found = []
    for k in keys:
        if not (re.search(r"[_@\[]", k) or k in _BARE_KEYS):
            continue  # a plain word ("compression", "step") is allowed inside a label
        if re.search(rf"(?<![\w@.]){re.escape(k)}(?![\w@])", str(text)):
            found.append(k)
    return found


def metric_keys(records) -> set:
    """Every metric key (and training field) of some records, plus the label registry's."""
    from nextlat_probe.labels import LABELS
    from nextlat_probe.records import TRAINING_KEYS

    keys = set(LABELS) | set(TRAINING_KEYS) | {"gap_to_floor", "val_gap"}
    for r in records:
        keys |= set(r.get("metrics", {})) if isinstance(r, dict) and "metrics" in r else set(r)
    return {k for k in keys if isinstance(k, str)}


def mpl_texts(fig) -> list[str]:
    """Every text a matplotlib figure draws: titles, axis labels, tick labels, legends."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def plotly_texts(fig) -> list[str]:
    """Every title, axis title, subplot title, legend entry and table header or row label of
    a plotly figure (its JSON)."""
    d = fig.to_plotly_json() if hasattr(fig, "to_plotly_json") else fig
    lay = d.get("layout", {})
    out = []

    def title(t):
        if isinstance(t, dict):
            t = t.get("text")
        if t:
            out.append(str(t))

    title(lay.get("title"))
    for k, v in lay.items():
        if (k.startswith("xaxis") or k.startswith("yaxis")) and isinstance(v, dict):
            title(v.get("title"))
            out += [str(x) for x in v.get("ticktext") or []]
    out += [str(a.get("text")) for a in lay.get("annotations") or [] if a.get("text")]
    for t in d.get("data", []):
        if t.get("showlegend", True) is not False and t.get("name"):
            out.append(str(t["name"]))
        if t.get("type") == "table":
            out += [str(x) for x in t["header"]["values"]]
            out += [str(x) for x in t["cells"]["values"][0]]
    return out


def html_headers(page: str) -> list[str]:
    """The text of every <th> and <h1>..<h3> of an HTML page."""
    from html.parser import HTMLParser

    class Scan(HTMLParser):
        def __init__(self):
            super().__init__()
            self.depth, self.buf, self.out = 0, [], []

        def handle_starttag(self, tag, attrs):
            if tag in ("th", "h1", "h2", "h3", "summary"):
                self.depth += 1

        def handle_endtag(self, tag):
            if tag in ("th", "h1", "h2", "h3", "summary") and self.depth:
                self.depth -= 1
                self.out.append("".join(self.buf).strip())
                self.buf = []

        def handle_data(self, data):
            if self.depth:
                self.buf.append(data)

    s = Scan()
    s.feed(page)
    return s.out
