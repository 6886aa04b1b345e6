"""``GET /metrics``: the operator's Prometheus endpoint (not project-scoped)."""
