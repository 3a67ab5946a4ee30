"""spagraph: cancer tissue regions in spatial transcriptomics from H&E + expression on a spatial graph.

Sub-packages are imported lazily (module ``__getattr__``) so that ``import spagraph`` stays cheap:
``spagraph.io`` (readers, synthetic slices, fetch), ``spagraph.tl`` (fit / load / predict, scanpy
style), ``spagraph.pl`` (maps of predicted slices), ``spagraph.embed`` (encoders, cache),
``spagraph.graph`` (slice graphs), ``spagraph.nn`` (MSFA, fusion), ``spagraph.train``
(fit/predict, thresholds, metrics, saved models), ``spagraph.experiment`` (YAML schema, runner,
Optuna, W&B), ``spagraph.viz`` (maps, curves), ``spagraph.report``.
``spagraph.load_model(path)`` is ``spagraph.tl.load_model``.
"""
import importlib as _importlib
import warnings as _warnings

__version__ = "0.1.0"

# torch_geometric calls torch.jit.script at import time, which torch >= 2.10 reports as a
# FutureWarning on every command; it is not ours to act on (spagraph never scripts models)
_warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
_warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)

_SUBMODULES = ("io", "tl", "pl", "embed", "graph", "nn", "train", "experiment", "viz", "report", "regions", "bench", "decide",
               "utils")
__all__ = list(_SUBMODULES) + ["load_model", "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"spagraph.{name}")
    if name == "load_model":
        from spagraph.tl import load_model
        return load_model
    raise AttributeError(f"module 'spagraph' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
