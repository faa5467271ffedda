"""Archipelag: a compute marketplace on Ray where idle machines run sandboxed workloads."""

__version__ = "0.1.0"
