"""Studies through Ray Tune + Optuna (SPEC §5): the trainable, the driver-side callbacks
(Parquet sink, live progress), the runner, the study scripts' flags and the demo."""
