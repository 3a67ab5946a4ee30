"""Slice readers -> one AnnData convention (docs/conventions.md), label schemas, synthetic slices, fetch."""
from spagraph.io.her2st import read_her2st
from spagraph.io.labels import LabelSchema
from spagraph.io.readers import describe_slice, read_h5ad, read_slice, read_spaceranger


def read_card(card, root, names=None):
    """Read a fetched dataset described by a dataset card: ``{slice name: AnnData}`` (spagraph.io.cards)."""
    from spagraph.io.cards import read_card as _read
    return _read(card, root, names)


__all__ = ["read_her2st", "read_spaceranger", "read_h5ad", "read_slice", "describe_slice", "LabelSchema", "read_card"]
