"""Runtimes: the sandboxes a host runs workloads in, behind one seam (base.Runtime)."""
