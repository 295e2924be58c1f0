"""The notebooks run top to bottom (SPEC §5), and the committed files carry no outputs.

Execution uses nbclient with the ``python3`` kernel. ipykernel installs that kernel spec
into the virtualenv (``.venv/share/jupyter/kernels/python3``) with ``argv[0] ==
"python"``, which jupyter_client replaces by the running interpreter, so the kernel is this
environment's Python without any hand-installed kernel spec. ``NEXTLAT_SMALL=1`` shrinks
every notebook to a smoke run; the kernel works in a temporary folder, so nothing is
written into the repository.
"""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.name for p in NOTEBOOKS]
#: notebook -> strings its last cell must print (the key result each one builds up to)
FINAL_OUTPUT = {
    "01_belief_geometry.ipynb": ["belief MSE", "gpt", "nextlat", "val loss", "concat"],
    "02_taxi_world_model.ipynb": ["next-token", "gpt", "nextlat", "val loss", "valid traj"],
    "03_effective_rank.ipynb": ["equal steps", "matched validation loss", "gpt", "nextlat"],
}


def test_expected_notebooks_exist():
    assert set(FINAL_OUTPUT) <= set(NAMES), f"missing notebooks: {sorted(set(FINAL_OUTPUT) - set(NAMES))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_committed_without_outputs(path):
    import warnings

    import nbformat

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. nbformat's MissingIDFieldWarning: every cell has an id
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    ids = [c.get("id") for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids), f"cell ids missing or repeated: {ids}"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} has stored outputs"
        assert cell.execution_count is None, f"code cell {i} has an execution count"
    first = "\n".join(c.source for c in code[:2])
    assert 'os.environ.get("NEXTLAT_SMALL", "0") == "1"' in first, "the small-size switch must be near the top"


def _text_outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


def _check_html_export(nb, name: str) -> None:
    """``jupyter nbconvert --to html`` of the executed notebook shows every figure, offline:
    each plotly output carries an HTML rendering beside its JSON, and the page inlines
    plotly.js once (no CDN) and draws one plot per figure."""
    import re

    from nbconvert import HTMLExporter

    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, f"{name}: no plotly figure"
    assert all("text/html" in o["data"] for o in figures), f"{name}: a figure without an HTML rendering"
    body, _ = HTMLExporter().from_notebook_node(nb)
    assert body.count("Plotly.newPlot(") >= len(figures)
    assert len(re.findall(r"plotly\.js v\d", body)) == 1, f"{name}: plotly.js not inlined exactly once"
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"'][^\"']*plotly", body), f"{name}: plotly.js from the network"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for all notebooks, so notebooks that share runs reuse them."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_runs(path, workdir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("NEXTLAT_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(workdir)}})
    t0 = time.time()
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    print(f"{path.name}: {time.time() - t0:.1f} s")
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        assert not errors, f"cell {i} raised {errors[0].get('ename')}: {errors[0].get('evalue')}"
    last = _text_outputs(code[-1])
    for needle in FINAL_OUTPUT.get(path.name, []):
        assert needle in last, f"{path.name}: final cell output lacks {needle!r}:\n{last}"
    _check_html_export(nb, path.name)
    assert (workdir / "runs" / "notebooks").is_dir(), "the notebook did not write its runs into its working folder"


@pytest.mark.slow
def test_belief_geometry_script(tmp_path):
    """analyses/belief_geometry.py with tiny settings: a summary row per objective and
    layer, with finite probe scores that a real probe must reach (R^2 well above the
    shuffled control), and one per-seed row per run and layer."""
    out = tmp_path / "bg"
    cmd = [sys.executable, str(ROOT / "analyses" / "belief_geometry.py"), "--seeds", "1", "--steps", "30",
           "--n-train", "64", "--n-test", "32", "--device", "cpu", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "belief_geometry.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["objective"] for r in rows} == {"gpt", "nextlat"}
    for obj in ("gpt", "nextlat"):
        layers = {r["layer"] for r in rows if r["objective"] == obj}
        assert layers == {"embed", "L0", "L1", "concat"}, layers
    for r in rows:
        assert r["n"] == "1"
        for key in ("mse_mean", "r2_mean", "control_r2_mean", "val_loss_mean", "gap_to_floor_mean", "mse_min", "mse_max"):
            assert math.isfinite(float(r[key])), (key, r)
        assert r["mse_std"] == "nan"  # one seed: no spread to report
        assert float(r["mse_min"]) == float(r["mse_mean"]) == float(r["mse_max"])
        assert 0 < float(r["mse_mean"]) < 0.2
        # the exact belief is a function of the tokens, so even the embeddings predict it far
        # better than the shuffled control
        assert float(r["r2_mean"]) > float(r["control_r2_mean"]) + 0.3
        assert float(r["gap_to_floor_mean"]) > -0.05  # nobody beats the exact floor by much
    with open(out / "belief_geometry_runs.csv") as f:
        per_run = list(csv.DictReader(f))
    assert sorted((r["name"], r["layer"]) for r in per_run) == sorted(
        (f"{o}-seed0", lay) for o in ("gpt", "nextlat") for lay in ("embed", "L0", "L1", "concat"))
    tex = (out / "belief_geometry.tex").read_text()
    assert tex.count(r"\\") >= 9 and r"\toprule" in tex and "nextlat" in tex
    for name in ("belief_simplex.pdf", "belief_simplex.png", "probe_r2.pdf"):
        assert (out / name).stat().st_size > 1000, name
    assert "belief MSE" in proc.stdout and "nextlat" in proc.stdout
