"""Compose several plotly figures into ONE offline HTML page (plotly.js embedded once)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

PAGE_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
p.caption{color:#444;max-width:900px;line-height:1.45} table.summary{border-collapse:collapse;font-size:.9em;margin:1em 0}
table.summary th,table.summary td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
table.summary th:first-child,table.summary td:first-child{text-align:left} table.summary th{background:#f3f3f3}
.note{background:#fff8e1;border-left:4px solid #E69F00;padding:.5em 1em;margin:1em 0}
"""


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def figure_div(fig: Any) -> str:
    """A figure as an HTML div that uses the page's embedded plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False)


def write_page(sections: list[tuple[str, str, Any]], path: str | Path, title: str = "nextlat_probe", intro_html: str = "") -> Path:
    """``sections``: (heading, caption, figure-or-html-string). Writes a self-contained page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>",
        f"<script type='text/javascript'>{_plotly_js()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro_html,
    ]
    for heading, caption, fig in sections:
        anchor = "".join(c if c.isalnum() else "-" for c in heading.lower()).strip("-")
        parts.append(f"<h2 id='{anchor}'>{html.escape(heading)}</h2>")
        if caption:
            parts.append(f"<p class='caption'>{html.escape(caption)}</p>")
        parts.append(fig if isinstance(fig, str) else figure_div(fig))
    parts.append("</body></html>")
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text("\n".join(parts), encoding="utf-8")
        tmp.replace(path)
    except BaseException:  # a full disk, Ctrl-C: no half-written page left beside the target
        tmp.unlink(missing_ok=True)
        raise
    return path
