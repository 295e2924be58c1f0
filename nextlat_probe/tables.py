"""Text, CSV and LaTeX tables from records (``nextlat_probe.records``) and flat rows.

Columns are ``(key, header, fmt)`` triples. A key addresses, in this order, an identity or
training field of the record (``name``, ``objective``, ``step``, ``seed``, ``val_loss``,
``gap_to_floor`` ...), the measurement fields ``analysis`` / ``layer`` / ``variant``, a
parameter as ``params.<name>``, or a metric name. Rates render as ``value [low, high]``
with the column's format; None as ``-``::

    from nextlat_probe.tables import text_table, protocol_note, write_csv
    print(text_table(records, [("name", "model", ""), ("layer", "layer", ""),
                               ("effective_rank", "eff. rank", ".2f")]))
    print(protocol_note(records))        # rank: n_seqs=256, seq_len=16, seed=0, center=False
    write_csv(records, "rank.csv")       # rates as key, key_low, key_high, key_n

``format_table`` (plain rows), ``mean_std`` / ``mean_std_table`` / ``latex_table`` (rows
of ``experiments.summarise``, or records) and ``write_csv`` are the toolkit's only table
writers.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .records import IDENTITY_KEYS, TRAINING_KEYS, check_record, check_records, is_rate

Column = tuple[str, str, str]
FIELD_KEYS = IDENTITY_KEYS + TRAINING_KEYS + ("analysis", "layer", "variant")


# --------------------------------------------------------------------------------------
# plain rows
# --------------------------------------------------------------------------------------
def _cell(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "nan"
    try:
        return format(v, fmt) if fmt else str(v)
    except (TypeError, ValueError):
        return str(v)


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table. ``columns``: (key, header, format spec such as '.2f' or '')."""
    body = [[_cell(r.get(k), f) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------
def _checked(records: Iterable[Any], what: str) -> list[dict[str, Any]]:
    return check_records(records, what)


def field(record: Mapping[str, Any], key: str) -> Any:
    """The raw value of column ``key`` in a record: a record field, ``params.<name>``, a
    metric (a number, list or rate), or one element of a list metric (``errors[0]``); None
    when absent."""
    if key in FIELD_KEYS:
        return record.get(key)
    if key.startswith("params."):
        return record.get("params", {}).get(key[len("params."):])
    if key.endswith("]") and "[" in key:
        name, _, index = key[:-1].partition("[")
        values = record.get("metrics", {}).get(name)
        try:
            return values[int(index)]
        except (TypeError, ValueError, IndexError):
            return None
    return record.get("metrics", {}).get(key)


def format_value(v: Any, fmt: str = "") -> str:
    """One display cell: a rate as ``value [low, high]`` (``n/a`` when it measured nothing),
    a number with ``fmt``, None as ``-``, NaN as ``nan``, anything else as ``str``."""
    if is_rate(v):
        if v.get("value") is None:
            return "n/a"
        s = _cell(float(v["value"]), fmt)
        if v.get("low") is not None and v.get("high") is not None:
            s += f" [{_cell(float(v['low']), fmt)}, {_cell(float(v['high']), fmt)}]"
        return s
    if isinstance(v, (list, tuple)):
        return f"[{len(v)} values]"
    return _cell(v, fmt)


def record_rows(records: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> list[dict[str, str]]:
    """Flat display rows, one per record: ``{key: formatted cell}`` for each column."""
    recs = _checked(records, "record_rows")
    return [{k: format_value(field(r, k), f) for k, _, f in columns} for r in recs]


def text_table(records: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Records as a plain-text table (``format_table`` of ``record_rows``)."""
    rows = record_rows(records, columns)
    return format_table(rows, [(k, h, "") for k, h, _ in columns])


def flat_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as one flat CSV row: identity, training and measurement fields, then every
    metric: numbers and strings as they are, a rate as ``key``, ``key_low``, ``key_high``,
    ``key_n``; lists and other nested values are left out (``params`` too: see
    ``protocol_note``)."""
    row: dict[str, Any] = {k: record.get(k) for k in FIELD_KEYS}
    for k, v in record["metrics"].items():
        if is_rate(v):
            row.update({k: v["value"], f"{k}_low": v["low"], f"{k}_high": v["high"], f"{k}_n": v["n"]})
        elif v is None or isinstance(v, (int, float, str, bool)):
            row[k] = v
    return row


def _is_record(r: Any) -> bool:
    return isinstance(r, Mapping) and "metrics" in r and "analysis" in r


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Records (flattened by ``flat_row``) or plain rows as CSV. Columns: ``columns``, else
    every key in first-seen order; lists and dicts are skipped unless named; None is an
    empty cell and NaN is written as ``nan``. Returns the path."""
    items = list(rows)
    flat = []
    for r in items:
        if _is_record(r):
            check_record(r)
            flat.append(flat_row(r))
        else:
            flat.append(dict(r))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for r in flat:
            for k, v in r.items():
                if k not in columns and not isinstance(v, (list, dict, tuple)) and not hasattr(v, "shape"):
                    columns.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in flat:
            w.writerow({k: r.get(k) for k in columns})
    return path


def _param_text(v: Any) -> str:
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, (list, tuple)):
        return ",".join(_param_text(x) for x in v)
    return str(v)


def protocol_note(records: Iterable[Mapping[str, Any]]) -> str:
    """The protocol and ``params`` of the records as one line to print under a table: per
    analysis (first-seen order) ``analysis: protocol NAME (key=value, ...); key=value, ...``
    — the named protocol (``record["protocol"]``, with its defining parameters) first, then
    the parameters; a value that differs between records lists the values as ``a|b``;
    analyses joined by ``; ``. Empty when no record has a protocol or parameters."""
    recs = _checked(records, "protocol_note")
    per: dict[str, dict[str, list[str]]] = {}
    prot: dict[str, dict[str, list[str]]] = {}
    for r in recs:
        for src, dst in ((r.get("protocol") or {}, prot), (r["params"], per)):
            keys = dst.setdefault(r["analysis"], {})
            for k, v in src.items():
                vals = keys.setdefault(k, [])
                t = _param_text(v)
                if t not in vals:
                    vals.append(t)
    parts = []
    for a in per:
        bits = []
        pr = prot.get(a) or {}
        if pr:
            name = "|".join(pr.get("name", ["?"]))
            rest = ", ".join(f"{k}={'|'.join(v)}" for k, v in pr.items() if k != "name")
            bits.append(f"protocol {name}" + (f" ({rest})" if rest else ""))
        if per[a]:
            bits.append(", ".join(f"{k}={'|'.join(v)}" for k, v in per[a].items()))
        if bits:
            parts.append(f"{a}: " + "; ".join(bits))
    return "; ".join(parts)


#: a model counts as "much further from the floor" than another when its gap exceeds the
#: other's by this factor and by ``CONVERGENCE_MARGIN`` nats
CONVERGENCE_FACTOR = 1.5
CONVERGENCE_MARGIN = 0.02
#: above this gap (nats per target) for every model, no compared model is near its floor
UNCONVERGED_GAP = 0.1


def convergence_note(items: Iterable[Mapping[str, Any]], key: str = "gap_to_floor") -> str:
    """One line saying plainly when the compared models are not equally far trained: the
    gap to the exact floor of every model (records or summary rows: ``name``/``objective``
    and ``key``), and, when the largest gap exceeds the smallest by ``CONVERGENCE_FACTOR``
    and ``CONVERGENCE_MARGIN``, e.g. ``"nextlat gap 0.148 vs gpt 0.091: not equally
    converged; compare at matched loss"``; and when every gap exceeds ``UNCONVERGED_GAP``,
    that no model is near its floor. Empty when there is nothing to compare."""
    seen: dict[str, float] = {}
    for r in items:
        g = r.get(key)
        if g is None or not isinstance(g, (int, float)) or not math.isfinite(g):
            continue
        label = str(r.get("name") or r.get("objective"))
        seen.setdefault(label, float(g))
    if len(seen) < 2:
        return ""
    (lo_name, lo), (hi_name, hi) = min(seen.items(), key=lambda kv: kv[1]), max(seen.items(), key=lambda kv: kv[1])
    far = (f"; no model is near the exact floor (every gap above {UNCONVERGED_GAP:g}): the numbers describe "
           "unconverged models" if lo > UNCONVERGED_GAP else "")
    if hi > CONVERGENCE_FACTOR * max(lo, 0.0) and hi - lo > CONVERGENCE_MARGIN:
        return (f"{hi_name} gap to floor {hi:.3f} vs {lo_name} {lo:.3f}: not equally converged; "
                "compare at matched loss" + far)
    if far:
        return "gaps to the exact floor: " + ", ".join(f"{n} {g:.3f}" for n, g in seen.items()) + far
    return "gaps to the exact floor: " + ", ".join(f"{n} {g:.3f}" for n, g in seen.items()) + " (comparable)"


# --------------------------------------------------------------------------------------
# metrics as rows, models as columns (the world-model table, the report's summary)
# --------------------------------------------------------------------------------------
#: a key of ``metric_rows`` that starts with this is a heading row (``"# world model"``)
GROUP = "# "


def metric_cell(v: Any, key: str, analysis: str | None = None) -> str:
    """One cell of metric ``key`` in its label's format: a rate (or a rate-shaped per-pair
    mean) as ``value [low, high]``, ``n/a`` when it measured nothing; a number as is."""
    from .labels import label

    fmt = label(key, analysis).fmt
    if is_rate(v):
        if v.get("value") is None:
            return "n/a"
        return format_value(v, fmt)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return format_value(v, "")
    return label(key, analysis).format(v)


def metric_rows(columns: Sequence[tuple[str, Mapping[str, Any]]], keys: Sequence[str],
                analysis: str | None = None, short: bool = False,
                headers: Mapping[str, str] | None = None) -> list[list[str]]:
    """Metrics as rows, models as columns: one ``[header, cell, cell, ...]`` per key, the
    header the key's label with unit and direction (``nextlat_probe.labels``), each cell in
    the label's format (``metric_cell``). ``columns``: ``(column title, {key: value})``
    per model. A key ``"# words"`` is a heading row (``[words]``). Keys no column has are
    left out; a column without a key shows ``-``. ``headers``: a row header to use instead
    of the label's (e.g. ``effective rank (block 1) ↓``)."""
    from .labels import label

    out: list[list[str]] = []
    for key in keys:
        if key.startswith(GROUP):
            out.append([key[len(GROUP):]])
            continue
        if not any(key in vals and vals[key] is not None for _, vals in columns):
            continue
        out.append([(headers or {}).get(key) or label(key, analysis).header(short=short)]
                   + [metric_cell(vals.get(key), key, analysis) for _, vals in columns])
    while out and len(out[-1]) == 1:  # a heading with nothing under it
        out.pop()
    return [r for i, r in enumerate(out) if len(r) > 1 or (i + 1 < len(out) and len(out[i + 1]) > 1)]


def metric_table_text(columns: Sequence[tuple[str, Mapping[str, Any]]], keys: Sequence[str],
                      analysis: str | None = None, corner: str = "metric",
                      headers: Mapping[str, str] | None = None) -> str:
    """``metric_rows`` as a plain-text table (heading rows as a line of their own)."""
    rows = metric_rows(columns, keys, analysis, short=True, headers=headers)
    heads = [corner] + [t for t, _ in columns]
    body = [r + [""] * (len(heads) - len(r)) if len(r) > 1 else [f"[{r[0]}]"] + [""] * (len(heads) - 1) for r in rows]
    return format_table([dict(zip(heads, b)) for b in body], [(h, h, "") for h in heads])


def metric_table_html(columns: Sequence[tuple[str, Mapping[str, Any]]], keys: Sequence[str],
                      analysis: str | None = None, corner: str = "metric", colors: Sequence[str] | None = None,
                      css_class: str = "metrics", headers: Mapping[str, str] | None = None) -> str:
    """``metric_rows`` as an HTML table: metrics as rows (with unit and direction), models as
    columns (their titles in ``colors``), heading rows spanning the table. Narrow however
    many metrics there are: a report never scrolls sideways for it."""
    import html

    rows = metric_rows(columns, keys, analysis, headers=headers)
    colors = list(colors or [])
    head = f"<th>{html.escape(corner)}</th>" + "".join(
        f"<th style='color:{colors[i]}'>{html.escape(t)}</th>" if i < len(colors) else f"<th>{html.escape(t)}</th>"
        for i, (t, _) in enumerate(columns))
    body = []
    for r in rows:
        if len(r) == 1:
            body.append(f"<tr class='group'><th colspan='{len(columns) + 1}'>{html.escape(r[0])}</th></tr>")
        else:
            body.append(f"<tr><th scope='row'>{html.escape(r[0])}</th>"
                        + "".join(f"<td>{html.escape(c)}</td>" for c in r[1:]) + "</tr>")
    return f"<table class='{css_class}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --------------------------------------------------------------------------------------
# summaries over seeds (rows of experiments.summarise) and LaTeX
# --------------------------------------------------------------------------------------
def mean_std(row: Mapping[str, Any], metric: str, fmt: str = ".4g", sep: str = " ± ") -> str:
    """``'mean ± std'`` of a ``summarise`` row (just the mean when std is NaN; '-' if no
    value)."""
    m, s = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if m is None or not math.isfinite(m):
        return "-"
    if s is None or not math.isfinite(s):
        return format(m, fmt)
    return f"{format(m, fmt)}{sep}{format(s, fmt)}"


def mean_std_table(rows: list[dict[str, Any]], keys: Sequence[str], metrics: Sequence[Column]) -> str:
    """Plain-text table of ``summarise`` rows: the ``keys`` columns, then one
    ``mean ± std`` column per ``(metric, header, format)``."""
    cells = [{**{k: r.get(k) for k in keys}, **{m: mean_std(r, m, f) for m, _, f in metrics}} for r in rows]
    return format_table(cells, [(k, k, "") for k in keys] + [(m, h, "") for m, h, _ in metrics])


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: Any) -> str:
    """``text`` with LaTeX's special characters escaped (``next_lat`` -> ``next\\_lat``)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _latex_exponents(cell: str) -> str:
    """``2.98e-03`` -> ``2.98\\times10^{-3}`` inside a math cell."""
    return re.sub(r"(\d)e([+-])0*(\d+)", lambda m: f"{m.group(1)}\\times10^{{{m.group(2).strip('+')}{m.group(3)}}}", cell)


def _latex_metric(r: Mapping[str, Any], key: str, fmt: str) -> str:
    """A metric cell: ``$mean \\pm std$`` of a summarise row, ``$v$ [$lo$, $hi$]`` of a
    record's rate, ``$v$`` of a record's number; ``--`` when missing."""
    if not _is_record(r):
        cell = mean_std(r, key, fmt, sep=r" \pm ")
        return "--" if cell == "-" else f"${_latex_exponents(cell)}$"
    v = field(r, key)
    if is_rate(v):
        if v.get("value") is None:
            return "--"
        s = f"${_latex_exponents(format(float(v['value']), fmt))}$"
        if v.get("low") is not None and v.get("high") is not None:
            lo, hi = (_latex_exponents(format(float(v[b]), fmt)) for b in ("low", "high"))
            s += f" [${lo}$, ${hi}$]"
        return s
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f"${_latex_exponents(format(v, fmt))}$"
    return "--" if v is None or isinstance(v, float) else latex_escape(v)


def latex_table(rows: Iterable[Mapping[str, Any]], keys: Sequence[tuple[str, str]], metrics: Sequence[Column],
                caption: str | None = None, label: str | None = None) -> str:
    """A booktabs LaTeX table: ``keys`` = ``(field, header)`` columns shown as escaped text,
    ``metrics`` = ``(metric, header, format)`` columns shown in math mode: ``$mean \\pm
    std$`` for rows of ``experiments.summarise``, the value (rates with their 95% interval)
    for records. Headers, ``caption`` and ``label`` are written as given (they may hold
    LaTeX)."""
    items = list(rows)
    for r in items:
        if _is_record(r):
            check_record(r)
    head = [h for _, h in keys] + [h for _, h, _ in metrics]
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(keys) + "r" * len(metrics) + "}",
             r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for r in items:
        cells = []
        for k, _ in keys:
            v = field(r, k) if _is_record(r) else r.get(k, "")
            cells.append("--" if v is None else latex_escape(v))
        cells += [_latex_metric(r, m, fmt) for m, _, fmt in metrics]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + caption + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# the sweep's "where does NextLat beat GPT" table (sweeps.beats_table rows)
# --------------------------------------------------------------------------------------
#: the columns of the printed / Markdown beats table: (key, header, format)
BEATS_COLUMNS = [("preset", "preset", ""), ("steps", "steps", ""), ("lambda_h", "λh", "g"), ("lambda_kl", "λkl", "g"),
                 ("n", "n", ""), ("challenger_mean", "{c}", ".4g"), ("baseline_mean", "{b}", ".4g"),
                 ("diff_mean", "{c} − {b}", "+.4g"), ("interval", "95% t interval", ""), ("better", "better", ""),
                 ("clear", "clear", ""), ("gap_challenger", "gap {c}", ".3g"), ("gap_baseline", "gap {b}", ".3g"),
                 ("flag", "flag", "")]
#: ... of the matched-loss table: the steps each pair was read at follow the pair count
BEATS_MATCHED_COLUMNS = (BEATS_COLUMNS[:5] + [("steps_challenger", "steps {c}", ""), ("steps_baseline", "steps {b}", "")]
                         + BEATS_COLUMNS[5:])


def _beats_columns(beats: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return BEATS_MATCHED_COLUMNS if beats and beats[0].get("at") == "matched_loss" else BEATS_COLUMNS


def _header(col: str, challenger: str, baseline: str) -> str:
    return col.format(c=challenger, b=baseline)


def beats_sections(beats: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The beats rows per metric, with a heading that says which direction is better."""
    from .sweeps import metric_info

    out: list[tuple[str, list[dict[str, Any]]]] = []
    for r in beats:
        if not out or out[-1][1][0]["metric"] != r["metric"]:
            info = metric_info(r["metric"])
            out.append((f"{r['metric']}: {info.label}; {info.direction()}", []))
        out[-1][1].append(r)
    return out


def _beats_blocks(beats: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]], list[tuple[str, str, str]]]]:
    """(heading, rows, columns with their headers filled in) per metric of the table."""
    columns = _beats_columns(beats)
    out = []
    for heading, rows in beats_sections(beats):
        c, b = rows[0]["challenger"], rows[0]["baseline"]
        out.append((heading, rows, [(k, _header(h, c, b), f) for k, h, f in columns]))
    return out


def beats_text(beats: list[dict[str, Any]]) -> str:
    if not beats:
        return "(no NextLat / GPT pairs: the table needs both objectives with the same seeds)"
    return "\n\n".join(f"{heading}\n{format_table(rows, cols)}" for heading, rows, cols in _beats_blocks(beats))


def _md_cell(v: Any, fmt: str) -> str:
    return format_value(v, fmt).replace("|", "\\|")


def beats_markdown(beats: list[dict[str, Any]], intro: str = "") -> str:
    matched = _beats_columns(beats) is BEATS_MATCHED_COLUMNS
    lines = ["# Where does NextLat beat GPT?" + (" (at matched validation loss)" if matched else ""), ""]
    if intro:
        lines += [intro, ""]
    if not beats:
        lines.append("No NextLat / GPT pairs.")
    for heading, rows, cols in _beats_blocks(beats):
        heads = [h for _, h, _ in cols]
        lines += [f"## {heading}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(_md_cell(r.get(k), f) for k, _, f in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


def beats_html(beats: list[dict[str, Any]]) -> str:
    import html

    if not beats:
        return "<p>No NextLat / GPT pairs.</p>"
    parts = []
    for heading, rows, cols in _beats_blocks(beats):
        head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(r.get(k), f))}</td>"
                                        for k, _, f in cols) + "</tr>" for r in rows)
        parts.append(f"<h3>{html.escape(heading)}</h3><table class='summary'><tr>{head}</tr>{body}</table>")
    return "".join(parts)


def sweep_context_text(cfg, records: list[dict[str, Any]], at: str = "final", challenger: str = "NextLat") -> str:
    """What every number is: where the metrics come from and with which settings (each
    record's full protocol and parameters are in records.jsonl; sweep.csv names them);
    ``challenger`` names the objective the beats table compares with GPT."""
    from .sweeps import probe_n_test

    analyses = {r["analysis"] for r in records}
    where = ("each run's final checkpoint" if at == "final" else
             "matched validation loss (per seed, each model's first kept checkpoint at or below the larger of the "
             "two models' best validation losses; the steps used are listed)")
    parts = [f"World {cfg.world}; {cfg.seeds} seed(s) per setting. Beats table: {challenger} minus GPT at {where}, "
             "paired by seed, mean with a 95% Student t interval (n - 1 degrees of freedom)."]
    ev = [f"effective rank of the last block (uncentred, protocol training_length) on {cfg.n_seqs} sequences"]
    if "probe" in analyses:
        ev.append(f"belief probe R² of the last block (ridge, protocol held_out: tested on the last "
                  f"{probe_n_test(cfg.n_seqs)} of them)")
    if "worldmodel" in analyses:
        ev.append(f"world-model metrics on {cfg.n_pairs} held-out trips (--n-pairs; run_worldmodel's default is "
                  "200), protocol vafa2024, random detours at p = 0.75")
    if "mapping" in analyses:
        ev.append(f"the map rebuilt from {getattr(cfg, 'n_trips', '?')} sampled trips (protocol vafa2024: edge "
                  "precision and recall)")
    parts.append("Evaluated: " + "; ".join(ev) + f"; evaluation seed {cfg.eval_seed}.")
    parts.append("Lower is better for the validation loss and the effective rank (more compact); higher for the "
                 "probe R², next-token validity, valid trajectories, detour robustness, compression and the map's edge "
                 "precision and recall. A flagged row compares models "
                 "at different distances from the exact floor: compare them at matched loss (e.g. "
                 "experiments.matched_rank) before reading a difference as an effect of the objective.")
    return " ".join(parts)


__all__ = ["GROUP", "metric_cell", "metric_rows", "metric_table_text", "metric_table_html", "convergence_note", "CONVERGENCE_FACTOR", "CONVERGENCE_MARGIN", "format_table", "field", "format_value", "record_rows", "text_table", "flat_row", "write_csv",
           "protocol_note", "mean_std", "mean_std_table", "latex_escape", "latex_table", "BEATS_COLUMNS", "BEATS_MATCHED_COLUMNS", "beats_sections",
           "beats_text", "beats_markdown", "beats_html", "sweep_context_text"]
