"""Decisions from scores: calibration, label-free prevalence, threshold rules, guard, rule choice.

See :mod:`spagraph.decide.core` for the single entry point used by the runner and by saved-model
prediction, and docs/conventions.md for the keys written.
"""
from spagraph.decide.calibration import Calibration, fit_calibration, fit_relative, reliability
from spagraph.decide.core import Decision, DecisionState, SliceDecisions, decide, decide_rules, fit_state
from spagraph.decide.prevalence import adjust_posteriors, em_prior, mixture_prevalence
from spagraph.decide.rules import RULES

__all__ = ["Calibration", "fit_calibration", "fit_relative", "reliability", "Decision", "DecisionState", "SliceDecisions",
           "decide", "decide_rules", "fit_state", "adjust_posteriors", "em_prior", "mixture_prevalence", "RULES"]
