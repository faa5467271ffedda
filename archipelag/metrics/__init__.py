"""Metrics: the network's numbers for Prometheus (``GET /metrics``) and the public status page
(``GET /api/v1/status``).

The jobs service sees every job and host, so the network's numbers are kept there (``NetworkMetrics``); each
API replica counts its own requests (``RequestTally``) and sends the counts there about once a second. Any
replica answers ``/metrics`` for the whole network with one call.
"""
