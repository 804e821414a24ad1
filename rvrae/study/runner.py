"""The study runner: validate, connect to Ray, size trials to the cluster, run Ray Tune (SPEC §5).

Ray Tune schedules, Optuna (through `OptunaSearch`) searches, grids are `tune.grid_search`;
this module only wires them up:

    opts = StudyOptions(study="robustness", models=["rvrae", "ipca"], seeds=2, m=[50, 100])
    run_study(opts)         # -> StudyRun (rows written, resources used)

Everything the user can get wrong is checked before Ray starts or the out dir is created
(`prepare`), except what needs the cluster (GPUs), which is checked right after connecting and
still before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rvrae.errors import Interrupted, UserError
from rvrae.identity import StudyIdentity
from rvrae.study.trainable import model_config, resolved_config, train_trial

STUDIES = ("tune", "benchmark", "robustness")
DEFAULT_M = {"tune": [0], "benchmark": [0], "robustness": [50, 100, 150]}


@dataclass
class StudyOptions:
    study: str
    models: list[str]
    data: str = "synthetic"
    out: Path = Path("results")
    seeds: int = 10  # outer loop of every grid (SPEC §5); never searched
    m: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None  # cap for neural models
    configs: dict = field(default_factory=dict)  # model -> config overrides (--configs)
    config_source: str = "defaults"  # where `configs` came from ("--configs FILE"), for the rows
    load: dict = field(default_factory=dict)  # the loader's options for a panel file (load_panel)
    cpus_per_trial: float | None = None  # None: from the cluster
    gpus_per_trial: float | None = None  # None: 0 without GPUs, else GPU_FRACTION
    max_concurrent: int | None = None  # None: what fits
    address: str | None = None  # None: RAY_ADDRESS if set, else a private local Ray; "auto": attach or fail
    resume: bool = False
    verbose: bool = False
    samples: int = 16  # tune: Optuna trials per model
    metric: str = "valid_rank_ic"  # tune objective
    mode: str = "max"
    hook: Callable | None = None  # the one test hook (trial key "hook", rvrae.study.trainable); None here
    split: tuple[int, int, int] = (15, 3, 3)
    max_failures: int = 1  # Tune retries a failed trial this often before the error row
    retry_errors: bool = False  # with resume: this identity's error rows are removed and run again
    storage: str | None = None  # Tune experiment storage (default <out>/_tune; S3 on a cluster)
    scheduler: str = "none"  # tune: "asha" stops hopeless trials on their per-epoch valid_loss
    forecasts: bool = True  # store every trial's forecasts beside its row (rvrae.results.forecasts)
    squares: bool = False  # --squares: each characteristic's centred squared rank joins the panel (Panel.with_squares)
    resource_flags: bool = True  # the caller takes --cpus/--gpus-per-trial (the demo does not): idle_note's hint


@dataclass
class StudyRun:
    out: Path
    rows: list[str]  # Parquet files written by this run
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    skipped: int = 0  # cells already in the results store


GPU_FRACTION = 0.25  # small models: four trials share a GPU
SCHEDULERS = ("none", "asha")
# ASHA (Li et al. 2020) on the per-epoch validation loss: rungs at GRACE × 3^k epochs; a trial
# below the best third of those that reached its rung stops there. The first rung at a quarter
# of the epoch cap: earlier validation losses say little about where a net ends.
ASHA_REDUCTION = 3
ASHA_GRACE_SHARE = 0.25


def metric_names() -> list[str]:
    from rvrae.metrics import TEST_METRICS

    return [p + k for p in ("valid_", "", "omitted_") for k in TEST_METRICS]


# ---------------------------------------------------------------- validation (no side effects)


def load_configs(path: str | Path | None, models: list[str]) -> dict:
    """--configs FILE: JSON {model: {key: value}} (what `tune` writes). Keys are validated
    against each model's Config; models not in this study are ignored."""
    from rvrae.models.base import config_from_dict
    from rvrae.models.registry import get_spec, model_names

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--configs {p}: no such file")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--configs {p}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise UserError(f"--configs {p}: expected an object {{model: {{key: value}}}}")
    for name in raw:
        if name not in model_names():
            raise UserError(f"--configs {p}: unknown model {name!r}")
    out = {k: v for k, v in raw.items() if k in models}
    for name, cfg in out.items():
        config_from_dict(get_spec(name).config_cls, cfg, name)  # unknown key -> UserError
    return out


def check_out(out: Path) -> None:
    """The out dir must be a directory we can write (or creatable); nothing is created here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: not writable ({probe} does not allow writing)")


def lock_out(out: Path):
    """Hold an exclusive lock on the results folder `out` for the study's life, or raise a
    UserError: two studies writing one folder at once each see it empty, run every cell and
    write every row twice (measured: 6 rows for 3 cells, averaged as n = 6 by `rvrae table`).
    The lock file lives in /tmp (not $TMPDIR, which a batch scheduler sets per job: two jobs
    would lock two files), keyed by the folder's path, so the folder itself is not touched;
    the OS releases the lock when the process ends, killed or not. Returns the open file that
    holds it (close it to release)."""
    import fcntl
    import hashlib
    import tempfile

    key = hashlib.sha1(str(Path(out).resolve()).encode()).hexdigest()[:16]
    where = Path("/tmp") if os.access("/tmp", os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    fh = open(where / f"rvrae-out-{key}.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise UserError(f"{out}: another study is writing there ({holder}): wait for it to end, "
                        "or pass another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    return fh


def validate(opts: StudyOptions) -> None:
    from rvrae.models.base import config_from_dict
    from rvrae.models.registry import get_spec

    if opts.study not in STUDIES:
        raise UserError(f"unknown study {opts.study!r} (known: {', '.join(STUDIES)})")
    if not opts.models:
        raise UserError("no models given")
    for flag, vals in (("--models", opts.models), ("--m", opts.m or [])):  # a cell runs once
        twice = [v for i, v in enumerate(vals) if v in vals[:i]]
        if twice:
            raise UserError(f"{flag} names {twice[0]} twice")
    for name in opts.models:
        config_from_dict(get_spec(name).config_cls, opts.configs.get(name), name)
    if opts.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {opts.seeds}")
    if not opts.m or any(m < 0 for m in opts.m):
        raise UserError(f"--m must be a list of integers >= 0, got {opts.m}")
    if opts.epochs is not None and opts.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {opts.epochs}")
    if opts.study == "tune":
        if opts.samples < 1:
            raise UserError(f"--samples must be >= 1, got {opts.samples}")
        if opts.metric not in metric_names():
            raise UserError(f"--metric {opts.metric!r} is not a metric (e.g. valid_rank_ic, valid_r2_total)")
        if not opts.metric.startswith("valid_"):  # SPEC §5: the search sees validation only
            raise UserError(f"--metric {opts.metric!r} is scored on the test months: the search must choose on "
                            f"a validation metric (valid_{opts.metric.removeprefix('omitted_')}, e.g. valid_rank_ic)")
        if opts.mode not in ("max", "min"):
            raise UserError(f"--mode must be max or min, got {opts.mode!r}")
        if opts.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler must be {' or '.join(SCHEDULERS)}, got {opts.scheduler!r}")
        read_best_configs(Path(opts.out) / "best_configs.json")  # merged into at the end: readable now
    for name, v in (("--cpus-per-trial", opts.cpus_per_trial), ("--gpus-per-trial", opts.gpus_per_trial)):
        if v is not None and (v < 0 or not math.isfinite(v)):
            raise UserError(f"{name} must be >= 0, got {v}")
    if opts.cpus_per_trial is not None and opts.cpus_per_trial <= 0:
        raise UserError("--cpus-per-trial must be > 0")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise UserError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    if opts.retry_errors and not opts.resume:
        raise UserError("--retry-errors goes with --resume (it reruns the error rows of a study already in --out)")
    if opts.max_failures < 0:  # Tune reads a negative count as "retry for ever"
        raise UserError(f"--max-failures must be >= 0, got {opts.max_failures}")
    if opts.storage is not None and "://" in opts.storage and not re.fullmatch(
            r"(?i:file|local)://(/\S*)?|[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+(/\S*)?", opts.storage):
        raise UserError(f"--storage {opts.storage}: expected a local folder or a URI such as s3://bucket/path")
    if opts.storage is not None and "://" not in opts.storage and ":/" in opts.storage:
        raise UserError(f"--storage {opts.storage}: a URI needs '://' (e.g. s3://bucket/path)")
    check_out(opts.out)


def prepare(opts: StudyOptions):
    """Validate everything that needs no cluster and load the panel (once per study)."""
    from rvrae.data.io import load_data
    from rvrae.data.panel import omit_stocks, split_by_years

    validate(opts)
    panel = load_data(opts.data, **opts.load)
    if opts.squares:
        panel = panel.with_squares()
    train, _, test = split_by_years(panel, *opts.split)  # too few months -> UserError
    omit_stocks(train, test, max(opts.m), 0)  # m >= eligible stocks -> UserError
    return panel


# ---------------------------------------------------------------- Ray


def resolve_address(address: str | None) -> str:
    """Where a study runs: `--address`, else the cluster `RAY_ADDRESS` names, else "local" (a
    private instance of its own: never another process's Ray found on the machine by accident,
    which would queue the study behind someone else's trials)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def reuse_actors(opts) -> bool:
    """Whether Tune reuses trainable actors (one actor runs trial after trial: 8 small trials
    took 9 s instead of 47 s): on a private local Ray only. On a cluster a node can go, and a
    cached actor on the lost node that Tune hands the next trial fails while that trial is
    still PENDING; Tune retries only RUNNING trials (`TuneController._process_trial_failure`),
    so the cell would end as an error row whatever `max_failures` says (seen in
    tests/test_reliability.py). A fresh actor costs about a second against trials of minutes."""
    return resolve_address(opts.address) == "local"


_HELD_AT_START: list[logging.LogRecord] = []  # connect's held records, for the next study's log file


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def holding_ray_logs(hold: bool):
    """Ray's driver-side records while Ray starts (Ray 2.60 warns "Token authentication is
    enabled ..." at every private start) are held, not printed, and kept in `_HELD_AT_START`
    once the start succeeds; the next study's log file gets them (`_quiet_ray`), so a study
    prints its own lines only (not --verbose). The "ray" logger's handlers are restored on the
    way out, refusal or not."""
    if not hold:
        yield
        return
    held = _Held()
    lg = logging.getLogger("ray")
    before = lg.handlers, lg.propagate
    lg.handlers, lg.propagate = [held], False
    try:
        yield
    finally:
        lg.handlers, lg.propagate = before
    _HELD_AT_START.extend(held.records)  # not reached when the start raised


def ray_init_kwargs(address: str | None = None, verbose: bool = False) -> dict:
    """The `ray.init` arguments of `connect`: attach to `address` ("auto" or host:port), or
    (None / "local") start a private local instance WITHOUT a dashboard, so no HTTP endpoint is
    opened (SPEC §8). `address="local"` is Ray's own spelling of "always start a new instance";
    Ray's gRPC ports are Ray's business (token authentication in Ray >= 2.50)."""
    level = logging.INFO if verbose else logging.WARNING
    common = {"log_to_driver": verbose, "logging_level": level}
    if address in (None, "local"):
        # Workers import torch and the models as they start (rvrae.study.trainable.warm_worker).
        hook = {"worker_process_setup_hook": "rvrae.study.trainable.warm_worker"}
        return {**common, "address": "local", "include_dashboard": False, "runtime_env": hook}
    return {**common, "address": address}


def connect(address: str | None, verbose: bool) -> bool:
    """Start a private local Ray, or attach to the cluster `--address` / `RAY_ADDRESS` names
    (`resolve_address`). An attach that fails is a UserError, never a silent local fallback.
    Returns True if this call started Ray (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    target = resolve_address(address)
    if target == "local":
        with holding_ray_logs(not verbose):
            ray.init(**ray_init_kwargs("local", verbose))
        return True
    named = f"--address {target}" if address else f"RAY_ADDRESS={target}"
    try:
        with holding_ray_logs(not verbose):
            ray.init(**ray_init_kwargs(target, verbose))
    except (ConnectionError, ValueError, RuntimeError) as e:
        hint = " (`ray start --head` starts one; leave --address out for a private local Ray)" if target == "auto" else ""
        raise UserError(f"{named}: cannot attach to a Ray cluster{hint}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    return True


def autoscaling_maxima(config: dict) -> tuple[dict, list[dict]]:
    """What an autoscaler config lets the cluster grow to: the head's resources plus each worker
    type's `resources` x its `max_workers`, the cluster-wide `max_workers` capping the number of
    workers (filled with the types richest in each resource first); and the node shapes a trial
    can land on. The Ray launcher writes the resources of every AWS/GCP node type into the
    config the head's autoscaler reads, so they are known before any worker exists."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    workers = [(dict(t.get("resources") or {}), int(t.get("max_workers", 0))) for k, t in types.items() if k != head]
    budget = int(config.get("max_workers", sum(n for _, n in workers)))
    total = {k: float(v) for k, v in (types.get(head, {}).get("resources") or {}).items()}
    for key in {k for r, _ in workers for k in r}:
        left = budget
        for res, n in sorted(workers, key=lambda w: -float(w[0].get(key, 0))):
            take = max(0, min(n, left))
            total[key] = total.get(key, 0.0) + take * float(res.get(key, 0))
            left -= take
    shapes = [res for res, n in workers if n > 0 and budget > 0]
    return total, shapes


def _autoscaler_config_file() -> Path | None:
    """The config file of the autoscaler that serves the connected cluster: its monitor process
    (on the head, where `ray submit` and `ray job submit` run the driver) names it on its
    command line (`--autoscaling-config`, next to `--gcs-address`). Linux /proc; None if not
    found (a cluster without autoscaler, or a driver on another machine)."""
    import ray

    gcs = ray.get_runtime_context().gcs_address or ""
    port = gcs.rpartition(":")[2]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = [a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0")]
        except OSError:
            continue
        if not any(a.endswith("monitor.py") for a in args[:3]):
            continue
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        addr, path = flags.get("gcs-address", ""), flags.get("autoscaling-config")
        if path and (addr == gcs or addr.rpartition(":")[2] == port):
            p = Path(path).expanduser()
            return p if p.is_file() else None
    return None


def cluster_capacity() -> tuple[dict, list[dict], dict]:
    """(what the connected cluster can grow to, the node shapes a trial can land on, what it has
    now). Growth comes from the cluster config the autoscaler reports to the GCS (autoscaler v2,
    KubeRay), else from the config file of the head's autoscaler (`ray up`, `ray start --head
    --autoscaling-config`); a cluster without autoscaler can only have what it has."""
    import ray
    import yaml

    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    shapes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    grow: dict = {}
    try:
        grow = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception:  # a private API: its absence only means "no reported config"
        grow = {}
    if not grow:
        path = _autoscaler_config_file()
        if path is not None:
            grow, more = autoscaling_maxima(yaml.safe_load(path.read_text()))
            shapes += more
    capacity = {k: max(now.get(k, 0.0), float(grow.get(k, 0.0))) for k in {*now, *grow}}
    return capacity, shapes, now


def plan_resources(opts: StudyOptions, cluster: dict, shapes: list[dict] | None = None) -> tuple[float, float, int]:
    """(cpus, gpus) per trial and max concurrent trials from what the cluster can GROW to
    (`cluster_capacity`), not what it has now: trials beyond the present nodes stay pending, and
    pending demand is what makes the autoscaler add nodes. Asking for GPUs where no node type
    has any, or for more than one node (type) holds, is an error here, never a trial that waits
    forever."""
    cpus_total = float(cluster.get("CPU", 0))
    gpus_total = float(cluster.get("GPU", 0))
    if cpus_total <= 0:
        raise UserError("the Ray cluster has no CPUs and no node type that would add any")
    cpus = opts.cpus_per_trial if opts.cpus_per_trial is not None else (1.0 if cpus_total >= 2 else cpus_total)
    if cpus > cpus_total:
        raise UserError(f"--cpus-per-trial {cpus:g} but the cluster can have at most {cpus_total:g} CPUs")
    gpus = opts.gpus_per_trial
    if gpus is None:
        gpus = 0.0 if gpus_total == 0 else GPU_FRACTION
    if gpus > 0 and gpus_total == 0:
        raise UserError(f"--gpus-per-trial {gpus:g} but the Ray cluster has no GPU and no node type that would add one (use 0)")
    if gpus > gpus_total:
        raise UserError(f"--gpus-per-trial {gpus:g} but the cluster can have at most {gpus_total:g} GPUs")
    if shapes and not any(s.get("CPU", 0) >= cpus - 1e-9 and s.get("GPU", 0) >= gpus - 1e-9 for s in shapes):
        raise UserError(f"a trial asks for {cpus:g} CPU and {gpus:g} GPU, but no node (type) of the cluster has that much")
    fits = math.floor(cpus_total / cpus + 1e-9)
    if gpus > 0:
        fits = min(fits, math.floor(gpus_total / gpus + 1e-9))
    conc = max(1, fits if opts.max_concurrent is None else min(opts.max_concurrent, fits))
    return cpus, gpus, conc


def waiting_note(cpus: float, gpus: float, capacity: dict, now: dict) -> str | None:
    """A line for the user when no trial fits the cluster as it is now (a head without workers):
    the study waits for the autoscaler instead of failing."""
    if now.get("CPU", 0) >= cpus - 1e-9 and now.get("GPU", 0) >= gpus - 1e-9:
        return None
    have = f"{now.get('CPU', 0):g} CPU, {now.get('GPU', 0):g} GPU"
    can = f"{capacity.get('CPU', 0):g} CPU, {capacity.get('GPU', 0):g} GPU"
    return f"waiting for resources: the cluster has {have} now and can grow to {can}; trials start as the autoscaler adds nodes"


def idle_note(opts: StudyOptions, cpus: float, gpus: float, conc: int, capacity: dict) -> str | None:
    """A line for the user when the default GPU share, not the CPUs, sets how many trials run
    at once and leaves half the CPUs or more idle (one 16-CPU, 1-GPU box: 4 trials on 4 CPUs).
    The share stays: at paper scale a GPU trial outruns a CPU one many times over, and four
    trials of the largest models fit a 24 GB GPU. But a panel of a few hundred stocks is bound
    by the CPU that launches its kernels: on one H200 with 16 CPUs, 16 CPU trials ran about 2.4x the
    epochs per second of the default's 4 GPU trials (README, "On a GPU")."""
    if gpus <= 0 or not opts.resource_flags or opts.gpus_per_trial is not None or opts.max_concurrent is not None:
        return None
    total = float(capacity.get("CPU", 0))
    used = conc * cpus
    if total - used < used - 1e-9:
        return None
    return (f"note: {conc} trials at a time ({gpus:g} GPU each) use {used:g} of {total:g} CPUs; "
            f"to use the rest give each trial more (--cpus-per-trial {math.floor(total / conc):g}) or share "
            f"each GPU among more trials (--gpus-per-trial {gpus * used / total:g}); for a panel of a few "
            "hundred stocks, CPU trials (--gpus-per-trial 0) ran fastest (README, \"On a GPU\")")


def _quiet_ray(log_file: Path) -> None:
    """Ray's and Tune's driver-side logs go to a file under the out dir (not --verbose), the
    records held while Ray started (`holding_ray_logs`) first."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for record in _HELD_AT_START:
        handler.handle(record)
    _HELD_AT_START.clear()
    for name in ("ray", "ray.tune", "ray.train", "ray.data", "optuna"):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
    import optuna

    optuna.logging.disable_default_handler()  # "A new study created ..." goes to the file


# ---------------------------------------------------------------- the study


def grid_cells(opts: StudyOptions) -> list[dict]:
    """(model, seed, m) cells with their config overrides, in a stable order."""
    cells = []
    for name in opts.models:
        for m in opts.m:
            for seed in range(opts.seeds):
                cells.append({"model": name, "seed": seed, "m": m, "hp": dict(opts.configs.get(name, {}))})
    return cells


def study_identity(opts: StudyOptions, panel, prov: dict | None = None) -> StudyIdentity:
    """The one identity of this study's rows (rvrae.identity): data, split, epoch cap,
    objective, where the configs came from, code version."""
    from rvrae.results.store import code_version

    tune = opts.study == "tune"
    source = opts.config_source
    if tune:
        source = "optuna search" if source == "defaults" else f"optuna search over {source}"
    return StudyIdentity(
        data_fingerprint=panel.fingerprint(), data_source=panel.source, split=tuple(opts.split),
        epoch_cap=opts.epochs, objective=opts.metric if tune else "", mode=opts.mode if tune else "",
        config_source=source, code_version=code_version(prov),
    )


def _key(study: str, cfg: dict) -> tuple:
    """The cell key of a trial config, as `rvrae.results.store.cell_key` makes it from a row."""
    from rvrae.results.store import canonical_json

    ident = cfg["identity"]
    config = canonical_json(resolved_config(cfg["model"], model_config(cfg)))
    return (study, cfg["model"], int(cfg["seed"]), int(cfg["m"]), config, *ident.key())


def run_study(opts: StudyOptions, console=None, panel=None) -> StudyRun:
    """Run one study end to end; returns what it wrote. `panel` skips loading (demo, tests)."""
    import ray

    if panel is None:
        panel = prepare(opts)
    else:
        validate(opts)
    for note in panel.meta.get("notices", []) if console is not None else []:
        console.print(f"note: {panel.source}: {note}", highlight=False, soft_wrap=True)
    out = Path(opts.out).resolve()
    lock = lock_out(out)  # one study per folder at a time; before Ray, so a refusal starts nothing
    try:
        from rvrae.results.store import existing_cells, provenance, remove_leftovers

        existing = existing_cells(out, opts.study)  # a refusal here starts no Ray either
        if existing and not opts.resume:
            raise UserError(f"{out} already holds {opts.study} results: pass --resume to continue, or another --out")
        started = connect(opts.address, opts.verbose)
        try:
            capacity, shapes, now = cluster_capacity()
            cpus, gpus, conc = plan_resources(opts, capacity, shapes)
        except UserError:
            if started:
                ray.shutdown()
            raise
        if opts.resume:
            remove_leftovers(out, opts.study)  # a killed run's half-written files: redone below
        out.mkdir(parents=True, exist_ok=True)
        (out / "_logs").mkdir(exist_ok=True)
        if not opts.verbose:
            _quiet_ray(out / "_logs" / f"{opts.study}.log")
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter honours verbose=0
        # Tune's own CSV / JSON / TensorBoard result loggers duplicate what the Parquet sink
        # records and cost time on every report: off unless the user asked for them.
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        static = provenance()
        identity = study_identity(opts, panel, static)
        if opts.retry_errors:  # those cells are then missing from the store: they run again
            from rvrae.results.store import remove_error_rows

            gone = remove_error_rows(out, opts.study, identity.key())
            existing = existing_cells(out, opts.study)
            if console is not None:
                console.print(f"--retry-errors: {gone} error row{'' if gone == 1 else 's'} removed, to run again",
                              highlight=False)  # fmt: skip
        run = StudyRun(out=out, rows=[], cpus_per_trial=cpus, gpus_per_trial=gpus, max_concurrent=conc)
        for note in (waiting_note(cpus, gpus, capacity, now), idle_note(opts, cpus, gpus, conc, capacity)):
            if note and console is not None:
                console.print(note, highlight=False, soft_wrap=True)
        common = {"identity": identity, "cpus": cpus}
        if not opts.forecasts:
            common["forecasts"] = False
        if opts.hook is not None:
            common["hook"] = opts.hook
        # a local --storage is made absolute (pyarrow refuses a relative path: "empty scheme")
        storage = str(Path(opts.storage).resolve()) if opts.storage and "://" not in opts.storage else opts.storage
        storage = storage or str(out / "_tune")
        panel_ref = ray.put(panel)  # once per study, shared by every Tuner below
        try:
            from rvrae.results.oracle import TUNE_CELLS, write_oracle

            planned = TUNE_CELLS if opts.study == "tune" else grid_cells(opts)
            # a synthetic panel generated here: its truth beside the rows (rvrae.results.oracle)
            write_oracle(out, opts.study, panel, identity, planned)
            if opts.study == "tune":
                for name in opts.models:
                    _tune_model(opts, name, panel_ref, common, storage, static, cpus, gpus, conc, run, console)
                write_best_configs(out, opts.models, identity, console)
            else:
                cells = [c for c in planned if _key(opts.study, {**c, **common}) not in existing]
                run.skipped = len(planned) - len(cells)
                _grid(opts, cells, panel_ref, common, storage, static, cpus, gpus, conc, run, console)
        finally:
            if started:
                ray.shutdown()
        return run
    finally:
        lock.close()


def _trainable(panel_ref, cpus: float, gpus: float):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(train_trial, panel=panel_ref), {"cpu": cpus, "gpu": gpus}
    )


def _fit(make_tuner, sink, live, run, what: str, expected: int) -> None:
    """Run a fresh Tuner; then every one of the `expected` trials must have its row, or the
    study was stopped (Tune catches the first Ctrl-C and returns as if it had finished)."""
    try:
        make_tuner().fit()
    finally:
        live.close()
        run.rows.extend(sink.written)
    if len(sink.written) < expected:
        raise Interrupted(f"{what}: stopped with {len(sink.written)} of {expected} trials recorded in {run.out}; "
                          f"run the same command with --resume to finish")


def storage_join(storage: str, *parts: str) -> str:
    """A folder under Tune's storage, a local path or a URI: `Path` would turn
    "s3://bucket/x" into "s3:/bucket/x", which pyarrow refuses ("Missing bucket name")."""
    if "://" in storage:
        return "/".join([storage.rstrip("/"), *parts])
    return str(Path(storage).joinpath(*parts))


def _run_config(opts, name: str, storage: str, callbacks: list):
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=storage,
        callbacks=callbacks,
        verbose=1 if opts.verbose else 0,
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
    )


def _grid(opts, cells, panel_ref, common, storage, static, cpus, gpus, conc, run, console) -> None:
    from ray import tune

    from rvrae.study.callbacks import LiveProgress, ParquetSink

    # A study resumes from the results store, never from Tune's experiment state: Tune saves
    # that state at most every ~10 s, so after a SIGKILL it can list finished (and written)
    # cells as pending, and `Tuner.restore` would run them again. The store is written
    # atomically per trial, so "cells not in the store" is exactly what is left to do.
    if not cells:
        return
    trainable = _trainable(panel_ref, cpus, gpus)
    sink = ParquetSink(str(run.out), opts.study, static)
    live = LiveProgress(opts.study, None, total=len(cells), console=console)

    def make_tuner():
        return tune.Tuner(
            trainable,
            param_space={**common, "cell": tune.grid_search(cells)},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=conc, reuse_actors=reuse_actors(opts)),
            run_config=_run_config(opts, opts.study, storage, [sink, live]),
        )

    _fit(make_tuner, sink, live, run, opts.study, len(cells))


def _tune_model(opts, name, panel_ref, common, storage, static, cpus, gpus, conc, run, console) -> None:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from rvrae.models.registry import get_spec
    from rvrae.results.store import recorded_keys
    from rvrae.study.callbacks import LiveProgress, ParquetSink

    # Resumed from the store as grids are (not `Tuner.restore`: its pickled state is another
    # identity's after `--data` changed, ignores a larger --samples, and writes rows to the
    # folder it was first run in); the search itself continues in optuna.db.
    storage = storage_join(storage, "tune")
    ident = common["identity"].key()
    # trials, not cells: a search that sampled one config twice ran two of its trials
    done = sum(1 for k in recorded_keys(run.out, "tune") if k[1] == name and k[5:] == ident) if opts.resume else 0
    samples = max(0, opts.samples - done)
    if samples == 0:
        return
    trainable = _trainable(panel_ref, cpus, gpus)
    sink = ParquetSink(str(run.out), "tune", static)
    live = LiveProgress(f"tune {name}", opts.metric, opts.mode, total=samples, console=console)
    from rvrae.results.oracle import TUNE_CELLS

    constants = {**common, "model": name, **TUNE_CELLS[0], "hp": dict(opts.configs.get(name, {}))}

    def make_tuner():
        # The sampler's seed moves with the trials already recorded: TPE's random start-up
        # trials come from that seed, and seed 0 again would propose the recorded configs again.
        search = OptunaSearch(space=get_spec(name).space, metric=opts.metric, mode=opts.mode, seed=done,
                              storage=optuna_storage(run.out), study_name=optuna_study_name(name, common["identity"]))  # fmt: skip
        return tune.Tuner(
            trainable,
            param_space=constants,
            tune_config=tune.TuneConfig(
                search_alg=search, scheduler=make_scheduler(opts.scheduler, name, model_config(constants)),
                num_samples=samples, max_concurrent_trials=conc, reuse_actors=reuse_actors(opts),
            ),
            run_config=_run_config(opts, name, storage, [sink, live]),
        )

    _fit(make_tuner, sink, live, run, f"tune {name}", samples)


def optuna_storage(out: Path):
    """The Optuna studies of `tune` persist in <out>/optuna.db (SQLite), which
    `optuna-dashboard sqlite:///<out>/optuna.db` opens. A resumed tune study (`--resume`) of
    the same identity continues the same Optuna study (OptunaSearch loads an existing one)."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(out).resolve() / 'optuna.db'}")


def optuna_study_name(model: str, identity: StudyIdentity) -> str:
    """One Optuna study per model and study identity (data, split, epochs, objective): another
    identity never continues this one's search."""
    import hashlib

    return f"{model}-{hashlib.sha256(repr(identity.key()).encode()).hexdigest()[:8]}"


def make_scheduler(kind: str, model: str, overrides: dict):
    """None, or ASHA for a model trained by epochs: its metric and mode are the scheduler's
    own (valid_loss, min: known after every epoch), not TuneConfig's, so OptunaSearch keeps
    the study's objective (known only at the end of a trial). Models without epochs (IPCA)
    have nothing to stop early."""
    if kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    epochs = resolved_config(model, overrides).get("epochs")
    if not epochs or int(epochs) < 2:
        return None
    max_t = int(epochs)
    grace = max(1, int(max_t * ASHA_GRACE_SHARE))
    return ASHAScheduler(time_attr="epochs", metric="valid_loss", mode="min", max_t=max_t,
                         grace_period=grace, reduction_factor=ASHA_REDUCTION, stop_last_trials=False)  # fmt: skip


def read_best_configs(path: Path) -> dict:
    """<out>/best_configs.json as a dict ({} when there is none); a file that is not a JSON
    object of model -> config is a UserError (checked before a tune study runs, so the end of
    a long search never trips on it)."""
    if not path.is_file():
        return {}
    try:
        best = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable as JSON ({e}); move it away or fix it") from None
    if not isinstance(best, dict) or not all(isinstance(v, dict) for v in best.values()):
        raise UserError(f"{path}: expected a JSON object of model -> config")
    return best


def write_best_configs(out: Path, models: list[str], identity: StudyIdentity, console=None) -> Path:
    """<out>/best_configs.json: model -> the config of its best ok tune trial of this study's
    identity, on its objective (merged with the file's other models), what `--configs` of
    benchmark and robustness reads. The table and plots read the same objective from the rows."""
    import pandas as pd

    from rvrae.identity import key_of
    from rvrae.results.store import read_results

    path = Path(out) / "best_configs.json"
    best = read_best_configs(path)
    df = read_results(out, study="tune")
    df = df[[key_of(r) == identity.key() for _, r in df.iterrows()]]
    metric, mode = identity.objective, identity.mode
    for name in models:
        sub = df[(df["model"] == name) & (df["status"] == "ok")] if len(df) else df
        vals = pd.to_numeric(sub[metric], errors="coerce") if len(sub) and metric in sub else pd.Series(dtype=float)
        if not vals.notna().any():  # the file keeps what it had: say so, not silently
            if console is not None:
                kept = "keeps its earlier entry" if name in best else "has no entry"
                console.print(f"note: no ok {name} trial of this study has {metric}; best_configs.json {kept} for {name}",
                              highlight=False, soft_wrap=True)  # fmt: skip
            continue
        row = sub.loc[vals.idxmax() if mode == "max" else vals.idxmin()]
        cfg = json.loads(row["config"])
        cfg.pop("epochs", None)  # the --epochs cap of the search is not part of the config
        best[name] = cfg
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(best, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
