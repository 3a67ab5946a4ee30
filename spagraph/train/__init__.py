"""Training: fit/predict loops, spatial tiles, thresholds, metrics, protocols."""
