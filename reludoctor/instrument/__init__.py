"""Instrumentation: one observer per ReLU-family call site of a PyTorch model."""
