"""Prometheus metrics, one registry per service: ``Metrics`` and the ``catalog`` of names."""

from tandem.metrics.catalog import CATALOG, PREFIX, SERVICE_GROUPS, MetricSpec
from tandem.metrics.registry import Metrics

__all__ = ["CATALOG", "PREFIX", "SERVICE_GROUPS", "MetricSpec", "Metrics"]
