"""Run reports: regions, boundary scores, risk and a self-contained HTML page."""
from spagraph.report.analysis import RunAnalysis, SliceAnalysis, analyse_run
from spagraph.report.html import write_report

__all__ = ["analyse_run", "write_report", "RunAnalysis", "SliceAnalysis"]
