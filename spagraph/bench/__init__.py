"""Benchmark suites: several experiments (spagraph, ablations, baselines, shipped reference
scores) run under one protocol, then one accuracy table and a per-slice AUC heat-map."""
from spagraph.bench.reference import score_reference
from spagraph.bench.suite import load_suite, run_suite
from spagraph.bench.table import plot_per_slice_auc, suite_table

__all__ = ["run_suite", "load_suite", "score_reference", "suite_table", "plot_per_slice_auc"]
