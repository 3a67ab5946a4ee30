"""Bad-input counting harness.

Every test in this folder that feeds the package a bad input carries ``@pytest.mark.bad_input``.
At the end of the session the terminal summary prints ``N bad inputs, N handled`` over all
collected ``bad_input`` tests (anywhere in the run, the io reader cases included); a test is
*handled* when it passed (setup, call and teardown); skipped tests are counted apart; an
xfail (a known unhandled case) counts as not handled.

A ``pytest_terminal_summary`` hook defined in a non-root conftest is path-filtered for some
hooks, so the counter is registered as a session-wide plugin object from ``pytest_configure``
(a historic hook: it fires for this conftest too, although it is loaded during collection).
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

TINY_FIXED_YAML = """\
name: {name}
data:
  sources:
    - {{reader: synthetic, n_slices: 3, n_spots: 100, seed: 9, with_image: false}}
  train: [syn0]
  validate: [syn1]
  test: [syn2]
embed: {{image_encoder: null, gene_encoder: pca, settings: {{n_pcs: 8, n_hvg: 80}}}}
graph: {{scales: [1.0, 2.0], n_dir_bins: 4}}
model: {{hidden: 8, heads: 2}}
train: {{epochs: 2, patience: 5, min_epochs: 1, seeds: [0]}}
protocol: {{kind: fixed}}
track: {{mode: disabled}}
"""


@pytest.fixture(scope="session")
def tiny_fixed_yaml():
    """``tiny_fixed_yaml(name)``: the experiment YAML of a seconds-long fixed-protocol run on three
    generated 100-spot slices (syn0 train, syn1 validate, syn2 test), named ``name``."""
    return lambda name: TINY_FIXED_YAML.format(name=name)

PLUGIN_NAME = "spagraph-bad-input-counter"


class BadInputCounter:
    def __init__(self):
        self.marked: set[str] = set()
        self.failed: set[str] = set()
        self.passed: set[str] = set()
        self.skipped: set[str] = set()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items):
        self.marked = {it.nodeid for it in items if it.get_closest_marker("bad_input") is not None}

    def pytest_runtest_logreport(self, report):
        if report.nodeid not in self.marked:
            return
        if report.failed:
            self.failed.add(report.nodeid)
        elif report.skipped:
            self.skipped.add(report.nodeid)
        elif report.when == "call" and report.passed:
            self.passed.add(report.nodeid)

    def counts(self) -> tuple[int, int]:
        """(bad inputs run, handled): skipped tests are left out of both and listed apart."""
        ran = self.marked - (self.skipped - self.failed)
        return len(ran), len(self.passed - self.failed)

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        n, ok = self.counts()
        if not n:
            return
        skipped = len(self.skipped - self.failed)
        terminalreporter.write_line(f"{n} bad inputs, {ok} handled" + (f" ({skipped} skipped)" if skipped else ""))
        missed = sorted(self.marked - self.skipped - (self.passed - self.failed))
        for nodeid in missed:
            terminalreporter.write_line(f"  not handled: {nodeid}")


def pytest_configure(config):
    config.addinivalue_line("markers", "bad_input: feeds a bad input; counted in the bad-input summary")
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(BadInputCounter(), PLUGIN_NAME)
