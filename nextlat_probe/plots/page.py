"""Compose several plotly figures into ONE offline HTML page (plotly.js embedded once)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

PAGE_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em;overflow-wrap:anywhere}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.05em}
p.caption{color:#444;max-width:900px;line-height:1.45}
table.summary,table.metrics{border-collapse:collapse;font-size:.9em;margin:1em 0;font-variant-numeric:tabular-nums}
table.summary th,table.summary td,table.metrics th,table.metrics td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
table.summary th:first-child,table.summary td:first-child{text-align:left} table.summary th{background:#f3f3f3}
table.metrics thead th{background:#f3f3f3;text-align:center} table.metrics tbody th{text-align:left;font-weight:normal}
table.metrics td{white-space:nowrap} table.metrics tr.group th{background:#fafafa;font-weight:bold;text-align:left}
.figure{overflow-x:auto;max-width:100%}
ul.verdict{line-height:1.5;max-width:1000px}
.note{background:#fff8e1;border-left:4px solid #E69F00;padding:.5em 1em;margin:1em 0;max-width:1000px}
details.protocol{color:#444;font-size:.9em;margin:.4em 0 1em 0;max-width:1000px}
details.protocol summary{cursor:pointer;color:#0072B2} details.protocol li{margin:.3em 0;overflow-wrap:anywhere}
"""


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


#: the widest a figure may be on the page (its text column): wider ones are narrowed, so a
#: page never scrolls sideways
PAGE_WIDTH = 1150


def figure_div(fig: Any) -> str:
    """A figure as an HTML div that uses the page's embedded plotly.js (no wider than
    ``PAGE_WIDTH``)."""
    if (fig.layout.width or 0) > PAGE_WIDTH:
        fig.update_layout(width=PAGE_WIDTH)
    return fig.to_html(full_html=False, include_plotlyjs=False)


def protocol_details(text: str, summary: str = "Protocol and parameters") -> str:
    """A protocol line as a collapsed block: available, without burying what it explains."""
    if not text:
        return ""
    return (f"<details class='protocol'><summary>{html.escape(summary)}</summary>"
            f"<p>{html.escape(text)}</p></details>")


def write_page(sections: list[tuple[Any, ...]], path: str | Path, title: str = "nextlat_probe", intro_html: str = "") -> Path:
    """``sections``: (heading, caption, figure-or-html-string[, protocol line]). Writes a
    self-contained page; a section's protocol line is a collapsed block under its figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>",
        f"<script type='text/javascript'>{_plotly_js()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro_html,
    ]
    for heading, caption, fig, *rest in sections:
        anchor = "".join(c if c.isalnum() else "-" for c in heading.lower()).strip("-")
        parts.append(f"<h2 id='{anchor}'>{html.escape(heading)}</h2>")
        if caption:
            parts.append(f"<p class='caption'>{html.escape(caption)}</p>")
        parts.append(f"<div class='figure'>{fig if isinstance(fig, str) else figure_div(fig)}</div>")
        if rest and rest[0]:
            parts.append(protocol_details(rest[0]))
    parts.append("</body></html>")
    from ..checkpoint import atomic_write_bytes

    # a temporary of this process's own (never a fixed name that could be a user's file),
    # removed on failure: a full disk or Ctrl-C leaves no half-written page
    return atomic_write_bytes("\n".join(parts).encode("utf-8"), path)
