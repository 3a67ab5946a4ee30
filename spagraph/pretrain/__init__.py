"""Self-supervised pretraining of the MSFA gene stream on unannotated sections (patient rule in :mod:`.pool`)."""
