"""spagraph: cancer tissue regions in spatial transcriptomics from H&E + expression on a spatial graph.

Sub-packages are imported lazily so that `import spagraph` stays cheap:
``spagraph.io`` (readers, synthetic slices, fetch), ``spagraph.embed`` (encoders, cache),
``spagraph.graph`` (slice graphs), ``spagraph.nn`` (MSFA, fusion), ``spagraph.train``
(fit/predict, protocols, thresholds, metrics), ``spagraph.experiment`` (YAML schema, runner,
Optuna, W&B), ``spagraph.viz`` (maps, report).
"""
__version__ = "0.1.0"
