"""Offline work on labeled traffic: train and export scorers, evaluate, calibrate thresholds.

Serving never imports this package (its dependencies come from the ``train`` extra)."""
