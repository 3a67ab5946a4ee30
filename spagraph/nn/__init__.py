"""Neural network layers: MSFA message passing, cross-modal fusion, losses."""
from spagraph.nn.msfa import MSFAConv
from spagraph.nn.fusion import CrossModalFusion
from spagraph.nn.model import SpaGraphNet, ModelSettings
from spagraph.nn.losses import info_nce, weighted_bce

__all__ = ["MSFAConv", "CrossModalFusion", "SpaGraphNet", "ModelSettings", "info_nce", "weighted_bce"]
