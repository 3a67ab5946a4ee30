"""Driver and Ray workers must run the same spagraph source: a task refuses otherwise."""
import pytest

from spagraph.experiment.executor import CodeMismatch, _run_in_worker, code_fingerprint


def test_worker_with_other_source_refuses_and_same_source_runs():
    code = code_fingerprint()
    assert len(code) == 64 and code == code_fingerprint()
    assert _run_in_worker(lambda a, b=0: a + b, 1, code, 2, b=3) == 5
    with pytest.raises(CodeMismatch, match="same spagraph code"):
        _run_in_worker(lambda: 1, 1, "0" * 64)
