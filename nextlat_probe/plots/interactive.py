"""Interactive plotly figures, written as self-contained offline HTML (plotly.js embedded,
no CDN: the page opens without network)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .style import model_color


def write_html(fig, path: str | Path, title: str | None = None) -> Path:
    """Write one figure as a standalone offline page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if title:
        fig.update_layout(title=title)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def rank_figure(records: list[dict[str, Any]]):
    """Left: singular-value spectra (log scale), one line per checkpoint and layer.
    Right: effective rank per layer, one line per checkpoint."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("singular-value spectrum", "effective rank per layer"))
    by_ckpt: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_ckpt.setdefault(r["checkpoint"], []).append(r)
    for i, (name, rows) in enumerate(by_ckpt.items()):
        color = model_color(rows[0].get("objective"), i)
        for j, r in enumerate(rows):
            s = r["spectrum"]
            fig.add_trace(
                go.Scatter(
                    x=list(range(1, len(s) + 1)),
                    y=s,
                    mode="lines",
                    name=f"{name} {r['layer']}",
                    legendgroup=name,
                    line=dict(color=color, width=1 + 1.5 * (j == len(rows) - 1)),
                    opacity=0.35 + 0.65 * (j + 1) / len(rows),
                    hovertemplate="component %{x}<br>singular value %{y:.3g}<extra>" + f"{name} {r['layer']}" + "</extra>",
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=[r["layer"] for r in rows],
                y=[r["effective_rank"] for r in rows],
                mode="lines+markers",
                name=f"{name} ({rows[0].get('objective')})",
                legendgroup=name,
                line=dict(color=color, width=2.5),
                hovertemplate="%{x}: eff. rank %{y:.2f}<extra>" + name + "</extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(type="log", title_text="singular value", row=1, col=1)
    fig.update_xaxes(type="log", title_text="component", row=1, col=1)
    fig.update_yaxes(title_text="effective rank", row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_layout(template="plotly_white", height=450, width=1100)
    return fig
