"""Pictures: spatial maps, curves, report."""
