"""Benchmarks against peers (PyTorch), run side by side."""
