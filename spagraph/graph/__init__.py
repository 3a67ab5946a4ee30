"""Slice graphs: AnnData with embeddings -> ``torch_geometric.data.Data`` with multi-scale edges."""
from spagraph.graph.neighbours import spot_pitch, multiscale_edges, direction_bins
from spagraph.graph.build import build_slice_graph, GraphSettings

__all__ = ["spot_pitch", "multiscale_edges", "direction_bins", "build_slice_graph", "GraphSettings"]
