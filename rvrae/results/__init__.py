"""Results: the Parquet store, tables (compute), renderers (text) and plots (SPEC §6, §7)."""
