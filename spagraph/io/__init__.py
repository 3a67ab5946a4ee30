"""Slice readers -> one AnnData convention (docs/conventions.md), label schemas, synthetic slices, fetch."""
from spagraph.io.her2st import read_her2st
from spagraph.io.labels import LabelSchema
from spagraph.io.readers import describe_slice, read_h5ad, read_slice, read_spaceranger

__all__ = ["read_her2st", "read_spaceranger", "read_h5ad", "read_slice", "describe_slice", "LabelSchema"]
