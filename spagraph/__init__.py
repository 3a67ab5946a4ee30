"""spagraph: cancer tissue regions in spatial transcriptomics from H&E + expression on a spatial graph.

Sub-packages are imported lazily so that `import spagraph` stays cheap:
``spagraph.io`` (readers, synthetic slices, fetch), ``spagraph.embed`` (encoders, cache),
``spagraph.graph`` (slice graphs), ``spagraph.nn`` (MSFA, fusion), ``spagraph.train``
(fit/predict, protocols, thresholds, metrics), ``spagraph.experiment`` (YAML schema, runner,
Optuna, W&B), ``spagraph.viz`` (maps, report).
"""
__version__ = "0.1.0"

import warnings as _warnings

# torch 2.14 deprecates torch.jit.script, which torch_geometric.nn calls at import time: third-party
# noise printed on every run (nothing spagraph can act on), so that one message is silenced.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
