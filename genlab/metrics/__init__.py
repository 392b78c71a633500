"""Metrics: likelihood accounting (:mod:`genlab.metrics.likelihood`)."""
