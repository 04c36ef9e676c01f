"""Operating a relay: health endpoints, Prometheus metrics, logging."""
