"""Driver-side Tune callbacks: the Parquet sink (one file per finished trial) and the live
rich progress display (SPEC §5, §6, §7).

Both pickle (Tune saves the RunConfig with its callbacks for `Tuner.restore`): they hold plain
data only; the rich console and Live are dropped on pickling and rebuilt on setup.
"""

from __future__ import annotations

import math
import time

from ray.tune import Callback

from rvrae.results.store import cell_id
from rvrae.study.trainable import flat, model_config, now_iso, resolved_config

# Trial result keys that are Tune's bookkeeping or per-epoch progress, not row columns.
_SKIP = {
    "train_loss", "valid_loss", "timestamp", "training_iteration", "time_this_iter_s",
    "time_total_s", "time_since_restore", "iterations_since_restore", "done", "date",
    "config", "trial_id", "experiment_tag", "node_ip", "should_checkpoint", "checkpoint_dir_name",
    "forecast_parquet",  # rvrae.results.forecasts.REPORT_KEY: stored beside the row, not in it
}


def build_row(study: str, trial, status: str, error: str, meta: dict) -> dict:
    """One results row (SPEC §6) from a finished trial's config and last result. The store
    flattens `config` into hp_* columns."""
    cfg = flat(trial.config)
    result = {k: v for k, v in (trial.last_result or {}).items() if k not in _SKIP}
    row = dict(meta["static"])  # provenance (driver's hostname until the trial's)
    row.update(cfg["identity"].columns())  # what produced the row: data, split, epochs, objective
    row.update({"epochs": 0, "device": "", "node_id": "", "fit_seconds": float("nan"),
                "started_at": meta.get("started_at") or now_iso()})
    row.update(result)  # the trial's own hostname, node_id, device, metrics
    row.update({
        "study": study, "model": cfg["model"], "seed": int(cfg["seed"]), "m": int(cfg["m"]),
        "trial_id": trial.trial_id, "status": status, "error": error,
        "num_failures": int(getattr(trial, "num_failures", 0)),  # Tune's retries (FailureConfig)
        "config": model_config(cfg),
        "resolved_config": resolved_config(cfg["model"], model_config(cfg)),
    })
    if status == "ok" and "finished_at" not in result:
        # Ended without its final report and without an error: an early-stopping scheduler
        # (ASHA) stopped it. Not a result (no test metrics): the tables skip it.
        row["status"] = "stopped"
        row["error"] = f"stopped early by the scheduler after {int(result.get('epochs') or 0)} epochs"
    if status == "error" or "finished_at" not in result:
        row["finished_at"] = now_iso()
    row["cell_id"] = cell_id(row)
    return row


def _error_text(trial) -> str:
    """`Type: message` of the trial's last error. Read from the trial's local staging files
    (Tune writes them before calling back; the storage copy is synced later)."""
    import os

    import ray.cloudpickle as cloudpickle

    text = ""
    pkl = getattr(trial, "pickled_error_file", None)
    if pkl and os.path.exists(pkl):
        try:
            with open(pkl, "rb") as fh:  # written by Tune in this run: trusted
                err = cloudpickle.load(fh)
            cause = getattr(err, "cause", None) or getattr(err, "__cause__", None) or err
            text = f"{type(cause).__name__}: {cause}"
        except Exception:
            text = ""
    if not text and trial.error_file and os.path.exists(trial.error_file):
        lines = [ln for ln in open(trial.error_file).read().splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    text = text.strip().splitlines()[0] if text.strip() else "trial failed"
    return text[:2000]


class ParquetSink(Callback):
    """Writes one Parquet file per finished trial (ok, error or stopped) via
    rvrae.results.store, and the trial's forecast, which arrives as Parquet bytes in its final
    result, beside it (rvrae.results.forecasts): written as the result arrives, then dropped
    from the result before Tune records it (Tune lets callbacks change it in place), so Tune's
    experiment state never holds forecasts."""

    def __init__(self, out_dir: str, study: str, static: dict):
        self.out_dir = str(out_dir)
        self.study = study
        self.static = dict(static)  # provenance: the same for every row
        self.started: dict[str, str] = {}
        self.written: list[str] = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, now_iso())

    def _write(self, trial, status: str, error: str) -> None:
        from rvrae.results.store import write_row

        meta = {"started_at": self.started.get(trial.trial_id, now_iso()), "static": self.static}
        path = write_row(self.out_dir, build_row(self.study, trial, status, error, meta))
        self.written.append(str(path))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from rvrae.results.forecasts import REPORT_KEY, write_forecast

        data = result.pop(REPORT_KEY, None)
        if data is None:
            return
        cfg = flat(trial.config)
        key = {"study": self.study, "model": cfg["model"], "seed": cfg["seed"], "m": cfg["m"],
               "resolved_config": resolved_config(cfg["model"], model_config(cfg)), **cfg["identity"].columns()}  # fmt: skip
        write_forecast(self.out_dir, self.study, cfg["model"], trial.trial_id, data, cell_id(key))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write(trial, "ok", "")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(trial, "error", _error_text(trial))


class LiveProgress(Callback):
    """Trials done / running / failed, elapsed, ETA and the best objective so far (rich.live)."""

    def __init__(self, title: str, metric: str | None, mode: str = "max", total: int = 0, console=None):
        self.title, self.metric, self.mode, self.total = title, metric, mode, total
        self.console = console
        self.done = self.failed = 0
        self.running: set[str] = set()
        self.waiting = 0  # trials Tune holds until the cluster has room (the autoscaler adds nodes)
        self.best = None
        self.t0 = time.time()
        self._live = None
        self._last = 0.0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["console"] = None
        state["_live"] = None
        return state

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        from rich.live import Live

        self.total = self.total or int(total_num_samples or 0)
        self.t0 = time.time()
        self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def _render(self):
        from rich.text import Text

        elapsed = time.time() - self.t0
        finished = self.done + self.failed
        eta = "?" if not finished else f"{elapsed / finished * max(0, self.total - finished):.0f}s"
        best = "-" if self.best is None else f"{self.best:.4f}"
        return Text(
            f"{self.title}: {finished}/{self.total} finished ({self.done} ok, {self.failed} failed), "
            f"{len(self.running)} running"
            + (f", {self.waiting} waiting for resources" if self.waiting else "")
            + f" | elapsed {elapsed:.0f}s | ETA {eta}"
            + (f" | best {self.metric} {best}" if self.metric else "")
        )

    def _refresh(self, force: bool = False):
        if self._live is not None and (force or time.time() - self._last > 0.5):
            self._live.update(self._render())
            self._last = time.time()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        v = (trial.last_result or {}).get(self.metric) if self.metric else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            if self.best is None or (v > self.best if self.mode == "max" else v < self.best):
                self.best = float(v)
        self._refresh(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._refresh(force=True)

    def on_step_end(self, iteration, trials, **info):
        # PENDING: created but not placed; under max_concurrent_trials that means no node has
        # room yet (on an autoscaling cluster: until the autoscaler adds one).
        self.waiting = sum(1 for t in trials if t.status == "PENDING")
        self._refresh()

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self):
        if self._live is not None:
            self._refresh(force=True)
            self._live.stop()
            if not self._live.console.is_terminal:
                self._live.console.line()  # a file or pipe gets the final line without newline
            self._live = None
