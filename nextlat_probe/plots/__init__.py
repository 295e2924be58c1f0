"""Plots: interactive plotly pages (``interactive``) and paper figures (``paper``).

Every plot function takes an analysis *result* (records or result objects), never a
checkpoint, so notebooks can restyle and re-plot without re-running anything.
"""
