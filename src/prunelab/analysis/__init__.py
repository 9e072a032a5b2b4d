"""Analyses of finished runs (library code under the ``report`` and ``sensitivity`` commands).

- :mod:`~prunelab.analysis.sweep`: the runs under a directory as one table and plots
  (``report.md|csv``; lottery runs ``lottery_report.md|csv``);
- :mod:`~prunelab.analysis.sensitivity`: per-layer pruning sensitivity and the profile it gives.
"""
