"""Scorer adapters: scikit-learn and ONNX Runtime behind the core's ``Scorer`` interface."""
