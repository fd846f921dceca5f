"""Scorer models at serving time: the ONNX runtime, the features training and serving share,
model manifests, and batching of concurrent scores. Never imports :mod:`cascade.training`."""
