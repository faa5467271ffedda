"""The host's gate: the one local process that may start containers, and only for coordinator-signed tickets."""
