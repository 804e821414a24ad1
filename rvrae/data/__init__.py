"""Panel data: readers and validation (io), preprocessing (prep), the Panel type (panel),
and the planted synthetic panel (synthetic)."""

from rvrae.data.panel import Panel, omit_stocks, split_by_years

__all__ = ["Panel", "omit_stocks", "split_by_years"]
