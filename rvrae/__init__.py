"""rvrae: the RVRAE dynamic factor model (Wang & Guo), five baselines, and Ray Tune studies."""

__version__ = "0.1.0"
