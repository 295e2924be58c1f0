"""The layers of docs/architecture.md: every module imports only its own layer or those
before it in the pipeline (imports inside functions count too), and nothing imports a CLI."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nextlat_probe"

LAYERS = [
    {"__init__", "errors", "records", "labels", "progress", "safeio", "limits", "maps"},
    {"worlds"},
    {"models"},
    {"training", "checkpoint", "sources", "hfexport"},
    {"activations"},
    {"analysis"},
    {"compare"},
    {"experiments", "sweeps", "cluster"},
    {"tables", "plots"},
    {"cli", "rank", "probe", "transition", "worldmodel", "mapping", "train", "taxi", "demo", "report", "speculate", "sweep", "export",
     "taskeval", "data"},
]
CLIS = LAYERS[-1] - {"cli"}
#: a module that sits lower than its package: the streaming statistics depend on numpy
#: alone, and activations streams hidden states into them
LOWER = {("analysis", "stats"): 0}


def _layer(top: str) -> int:
    if tuple(top.split(".")) in LOWER:
        return LOWER[tuple(top.split("."))]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"nextlat_probe.{top} is in no layer of docs/architecture.md")


def _imports(path: Path, pkg: Path = PKG):
    """Top-level nextlat_probe subpackage names imported by a module."""
    rel = path.relative_to(pkg).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # "from .. import __version__": the package itself
                    parts = ["__init__"]
                yield parts[0] if tuple(parts[:2]) not in LOWER else ".".join(parts[:2])
            elif node.module and node.module.startswith("nextlat_probe."):
                parts = node.module.split(".")[1:]
                yield parts[0] if tuple(parts[:2]) not in LOWER else ".".join(parts[:2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nextlat_probe."):
                    yield alias.name.split(".")[1]


def test_modules_import_downward_only():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        top = rel.parts[0].removesuffix(".py")
        me = _layer(top)
        for dep in set(_imports(path)):
            if dep == top:
                continue
            if _layer(dep) > me or (dep in CLIS and top not in CLIS):
                bad.append(f"{rel} imports nextlat_probe.{dep}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    """Relative imports are resolved, inside functions too, so an upward import is caught."""
    fake = tmp_path / "nextlat_probe" / "analysis" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from .stats import SufficientStats\n\ndef f():\n    from ..cli import run_main\n"
                    "    from nextlat_probe.compare import run_rank\n")
    deps = set(_imports(fake, tmp_path / "nextlat_probe"))
    assert deps == {"analysis.stats", "cli", "compare"}
    assert [d for d in deps if _layer(d) > _layer("analysis")] != []
