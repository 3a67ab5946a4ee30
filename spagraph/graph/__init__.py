"""Slice graphs: AnnData with embeddings -> ``torch_geometric.data.Data`` with multi-scale edges."""
from spagraph.graph.neighbours import spot_pitch, multiscale_edges, direction_bins, feature_knn_edges
from spagraph.graph.build import build_slice_graph, GraphSettings

__all__ = ["spot_pitch", "multiscale_edges", "direction_bins", "feature_knn_edges", "build_slice_graph", "GraphSettings"]
