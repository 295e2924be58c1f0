"""Analyses of hidden states, as pure functions and result dataclasses.

- ``stats``       streaming sufficient statistics (count, sum, X^T X) for large runs
- ``rank``        effective rank, participation ratio, spectra
- ``probes``      linear probes to exact beliefs, classifiers, coordinate regression
- ``transition``  own / post-hoc dynamics roll-out errors, belief-level consistency
- ``worldmodel``  taxi world-model metrics (validity, compression, distinction, detours)
- ``mapping``     street-map reconstruction from behaviour and from representations
- ``losses``      per-position loss vs the exact floor, matched-loss comparisons
- ``a5eval``      A5 (tagging form): accuracy by sequence length, p_psi as a recurrent model
- ``generation``  the one decoding API: sessions over a key/value cache, token rules, greedy
- ``speculative`` self-speculative decoding with p_psi as the drafter
- ``common``      loading checkpoints and drawing one shared set of sequences

Each has a thin CLI at the package top level (``python -m nextlat_probe.rank`` etc.).
"""
