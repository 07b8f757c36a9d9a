"""Experiment trackers (``log.trackers=[...]``): TensorBoard, Weights & Biases, Trackio, MLflow.

``metrics.jsonl`` is always written (``report.logger``); a tracker is a copy of the run for a
dashboard. Each receives the run's resolved config (``start``), every step's metrics and the
evaluation events (``log``: an event's metrics as ``<kind>/<key>``, e.g. ``eval/accuracy``), the
rows of ``samples.jsonl`` as tables where it has them (``samples``), and the summary (``summary``).
A tracker's package is imported only when the tracker is named, in its ``start``; each is an
optional extra (``pip install 'rltrain[wandb]'``).

A tracker can never stop or slow training: each runs in its own thread (``TrackerThread``), fed
through a bounded queue that the training loop only appends to. A tracker that fails (its package
missing, its service unreachable, an exception mid-run) or falls ``TrackerThread.QUEUE`` calls
behind is dropped with one warning line; the run and ``metrics.jsonl`` go on untouched. At the end
the logger gives each tracker ``CLOSE_TIMEOUT_S`` to finish (W&B and MLflow upload then).

Where each writes (the run's name is ``log.run_name``, default the run directory; the project is
``log.project``):
- ``tensorboard``: ``<run dir>/tensorboard`` (scalars; config, samples and summary as text).
- ``wandb``: the W&B project, or with ``WANDB_MODE=offline`` ``<run dir>/wandb`` (``wandb sync``
  uploads it later); samples as ``wandb.Table`` under ``samples/<kind>``. W&B's own settings
  (``WANDB_ENTITY``, ``WANDB_API_KEY``, ...) come from the environment.
- ``trackio``: Trackio's local store (``TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``);
  ``trackio show`` opens the dashboard; samples as ``trackio.Table``.
- ``mlflow``: the tracking server or store of ``MLFLOW_TRACKING_URI`` (else MLflow's default), the
  experiment ``log.project``; the config as params (flattened keys) and ``config.json``, samples as
  table artifacts ``samples/<kind>_step_<N>.json``. MLflow forbids some characters in metric names:
  ``eval/pass@4`` is logged as ``eval/pass_4``.

A resumed run continues the same W&B and MLflow run (their ids are kept in
``<run dir>/trackers.json``) and the Trackio run of the same name.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 120.0
TABLE_COLUMNS = ["step", "kind", "id", "prompt", "answer", "completion", "reward", "advantage", "correct", "length",
                 "finished", "info"]


@dataclass
class RunInfo:
    """What a tracker opens its run with."""

    run_dir: Path
    project: str
    name: str
    config: dict
    """The resolved config, nested dicts."""


class Tracker:
    """One experiment tracker. Every method runs in the tracker's own thread (``TrackerThread``), in
    order; an exception in any of them drops the tracker (one warning)."""

    name = ""
    extra = ""
    """The pip extra that installs its package: ``pip install 'rltrain[<extra>]'``."""

    def start(self, run: RunInfo) -> None:
        """Import the package, open (or resume) the run, record the config."""
        raise NotImplementedError

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Numeric metrics of one step (or of an event, keys ``<kind>/<key>``)."""
        raise NotImplementedError

    def samples(self, step: int, kind: str, rows: list[dict]) -> None:
        """Rows of samples.jsonl (``kind``: train | eval) as a table; trackers without tables ignore them."""

    def summary(self, step: int, values: dict[str, float], table: list[tuple[str, str, str]]) -> None:
        """The end of the run: numbers (the final evaluation, steps, run time) and the console's summary
        table (metric, before, after)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


TRACKERS: dict[str, type[Tracker]] = {}


def register(name: str):
    """Class decorator: make a ``Tracker`` available as ``log.trackers=[<name>]``."""
    def add(cls: type[Tracker]) -> type[Tracker]:
        cls.name = name
        TRACKERS[name] = cls
        return cls
    return add


def table_data(rows: list[dict]) -> list[list]:
    """``rows`` as lists in ``TABLE_COLUMNS`` order (absent fields None, ``info`` as JSON text)."""
    return [[json.dumps(r["info"], ensure_ascii=False) if c == "info" and r.get("info") is not None else r.get(c)
             for c in TABLE_COLUMNS] for r in rows]


def _ids(run_dir: Path) -> dict:
    path = run_dir / "trackers.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_id(run_dir: Path, name: str, run_id: str) -> None:
    """Keep a tracker's run id for a resumed run (``trackers.json``; each tracker writes its own key)."""
    with _IDS_LOCK:
        ids = _ids(run_dir)
        ids[name] = run_id
        (run_dir / "trackers.json").write_text(json.dumps(ids, indent=1) + "\n")


_IDS_LOCK = threading.Lock()


# --------------------------------------------------------------------------- the trackers


@register("tensorboard")
class TensorBoard(Tracker):
    extra = "tensorboard"

    def start(self, run: RunInfo) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))
        # TensorBoard's text plugin renders markdown: an indented block shows the YAML as it is.
        text = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def samples(self, step: int, kind: str, rows: list[dict]) -> None:
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", "⏎")  # noqa: E731 - one markdown table row each
        cols = [c for c in TABLE_COLUMNS if c not in ("step", "kind", "info")]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
        self.writer.add_text(f"samples/{kind}", "\n".join(lines), step)

    def summary(self, step: int, values: dict[str, float], table: list[tuple[str, str, str]]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"summary/{k}", v, step)
        lines = ["| metric | before | after |", "|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in table]
        self.writer.add_text("summary", "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


@register("wandb")
class WandB(Tracker):
    extra = "wandb"

    def start(self, run: RunInfo) -> None:
        import wandb

        self.wandb = wandb
        run_id = _ids(run.run_dir).get("wandb") or uuid.uuid4().hex[:12]
        # console="off": the run's console output stays in the run directory's log, not W&B's copy of
        # stdout (W&B would wrap sys.stdout from this thread, under the live display).
        self.run = wandb.init(project=run.project, name=run.name, dir=str(run.run_dir), config=run.config,
                              id=run_id, resume="allow", settings=wandb.Settings(console="off"))
        _save_id(run.run_dir, "wandb", run_id)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def samples(self, step: int, kind: str, rows: list[dict]) -> None:
        self.run.log({f"samples/{kind}": self.wandb.Table(columns=TABLE_COLUMNS, data=table_data(rows))}, step=step)

    def summary(self, step: int, values: dict[str, float], table: list[tuple[str, str, str]]) -> None:
        self.run.summary.update({**values, **{f"summary/{m}": f"{b} → {a}" for m, b, a in table}})

    def close(self) -> None:
        self.run.finish()


@register("trackio")
class Trackio(Tracker):
    extra = "trackio"

    def start(self, run: RunInfo) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=run.project, name=run.name, config=run.config, resume="allow", embed=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def samples(self, step: int, kind: str, rows: list[dict]) -> None:
        self.run.log({f"samples/{kind}": self.trackio.Table(columns=TABLE_COLUMNS, data=table_data(rows))}, step=step)

    def summary(self, step: int, values: dict[str, float], table: list[tuple[str, str, str]]) -> None:
        self.run.log({f"summary/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def mlflow_key(key: str) -> str:
    """A metric or param name MLflow accepts: letters, digits and ``_-. :/``; anything else → ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"algo.name": "grpo", ...}`` (values as text)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


@register("mlflow")
class MLflow(Tracker):
    extra = "mlflow"
    PARAM_CHARS = 6000  # MLflow's limit on a param value

    def start(self, run: RunInfo) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, else MLflow's default store
        exp = self.client.get_experiment_by_name(run.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(run.project)
        self.run_id = _ids(run.run_dir).get("mlflow")
        if self.run_id is not None and self._exists(self.run_id, exp_id):
            self.client.update_run(self.run_id, status="RUNNING")  # resumed: the params are there already
            return
        self.run_id = self.client.create_run(exp_id, run_name=run.name).info.run_id
        _save_id(run.run_dir, "mlflow", self.run_id)
        params = [Param(mlflow_key(k), v[: self.PARAM_CHARS]) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, run.config, "config.json")

    def _exists(self, run_id: str, exp_id: str) -> bool:
        """Whether the resumed run's MLflow run is in this store and experiment (else a new one starts)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.experiment_id == exp_id
        except MlflowException:
            return False

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), float(v), now, step)
                                                    for k, v in metrics.items()])

    def samples(self, step: int, kind: str, rows: list[dict]) -> None:
        data = table_data(rows)
        self.client.log_table(self.run_id, data={c: [r[i] for r in data] for i, c in enumerate(TABLE_COLUMNS)},
                              artifact_file=f"samples/{kind}_step_{step:06d}.json")

    def summary(self, step: int, values: dict[str, float], table: list[tuple[str, str, str]]) -> None:
        self.log(step, {f"summary/{k}": v for k, v in values.items()})
        for m, b, a in table:
            self.client.set_tag(self.run_id, mlflow_key(f"summary/{m}")[:250], f"{b} → {a}")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


# --------------------------------------------------------------------------- the guard


def _why(err: BaseException, tracker: Tracker) -> str:
    """One line saying what went wrong (with the install command for a missing package)."""
    first = (str(err).strip().splitlines() or [""])[0][:300]
    if isinstance(err, ImportError):
        return f"its package is not installed ({first}; pip install 'rltrain[{tracker.extra}]')"
    return f"{type(err).__name__}: {first}"


class TrackerThread:
    """One tracker, run in its own daemon thread: ``call`` only appends to a bounded queue, so a
    tracker that blocks (an unreachable service) or raises never holds up the caller. The first
    failure drops the tracker with one warning line; later calls are ignored."""

    QUEUE = 1000
    """Calls a tracker may fall behind before it is dropped (a step makes one or two)."""

    def __init__(self, tracker: Tracker, run: RunInfo):
        self.tracker, self.name = tracker, tracker.name
        self.failed = False
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=self.QUEUE)
        self._thread = threading.Thread(target=self._work, name=f"rltrain-tracker-{self.name}", daemon=True)
        self._thread.start()
        self.call("start", run)

    def call(self, method: str, *args) -> None:
        """Queue ``tracker.<method>(*args)``; returns at once."""
        if self.failed:
            return
        try:
            self._queue.put_nowait((method, args))
        except queue.Full:
            self._fail(f"it fell {self.QUEUE} calls behind (is its service reachable?)")

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.failed:
                continue  # dropped: drain the queue without calling it
            method, args = item
            try:
                getattr(self.tracker, method)(*args)
            except Exception as err:  # noqa: BLE001 - any tracker error drops the tracker, never the run
                self._fail(f"{method} failed: {_why(err, self.tracker)}")

    def _fail(self, why: str) -> None:
        with self._lock:
            if self.failed:
                return
            self.failed = True
        log.warning("tracker %s dropped: %s; training goes on, metrics.jsonl has every step", self.name, why)

    def close(self, timeout: float | None = None) -> None:
        """Let the tracker finish what is queued and close its run, waiting at most ``timeout`` s
        (default ``CLOSE_TIMEOUT_S``)."""
        timeout = CLOSE_TIMEOUT_S if timeout is None else timeout
        self.call("close")
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass  # still stuck: the join below times out and says so
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._fail(f"it did not finish within {timeout:g} s at the end of the run; what it had not sent "
                       "is lost")


def start_trackers(names, run: RunInfo) -> list[TrackerThread]:
    """A running ``TrackerThread`` for each name (validated up front: ``rltrain.config.rules``)."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; valid: {', '.join(sorted(TRACKERS))}")
    return [TrackerThread(TRACKERS[n](), run) for n in names]
