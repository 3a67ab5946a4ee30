"""Accuracy benchmark: run a suite of experiments and print its table.

    .venv/bin/python benchmarks/accuracy.py experiments/suites/her2st.yaml --out runs/bench_her2st
    .venv/bin/python benchmarks/accuracy.py experiments/suites/synthetic.yaml --out runs/bench_synthetic

Same as ``spagraph bench SUITE --out DIR`` (both call ``spagraph.bench.run_suite``): resumable,
writes DIR/<entry>/ (metrics.json, predictions.csv), DIR/table.md, DIR/table.csv, DIR/per_slice_auc.png.
"""
from __future__ import annotations

import argparse
import logging

from spagraph.bench import run_suite
from spagraph.bench.table import table_markdown


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", help="suite YAML (experiments/suites/*.yaml)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--only", action="append", help="run only this entry now (repeatable)")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    df = run_suite(a.suite, a.out, only=a.only, progress=a.progress)
    print(table_markdown(df))


if __name__ == "__main__":
    main()
