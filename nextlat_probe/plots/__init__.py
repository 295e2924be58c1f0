"""Plots: interactive plotly pages (``interactive``, ``page``) and paper figures (``paper``).

Every figure function takes RECORDS (``nextlat_probe.records``), never a checkpoint, so
notebooks can restyle and re-plot without re-running anything; the training-curve figures
take the rows of a run's ``metrics.jsonl``. ``style`` holds the look (colours, dashes,
sizes, rcParams), ``geometry`` what both backends draw (projections, map geometry).
"""
