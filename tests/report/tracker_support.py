"""For tests/report/test_trackers.py (and the processes it starts): ``drive``, a two-step run's
worth of RunLogger calls with what the trackers should hold afterwards, and trackers that fail,
registered like the built-in ones (``log.trackers=[raising]``). No torch import: a child process
that only drives a tracker starts in about a second."""
import threading
from pathlib import Path

from rltrain.report import trackers
from rltrain.report.logger import RunLogger

CONFIG = {"algo": {"name": "grpo", "kl_coef": 0.0}, "train": {"steps": 2, "lr": 4e-5}, "eval": {"k": [1, 4]}}
ROWS = [
    {"kind": "train", "id": "train-3", "prompt": "What is 2 + 2?", "answer": "4", "completion": "4\x1b[2J",
     "reward": 1.0, "advantage": 0.5, "length": 3, "finished": True, "info": {"correct": True}},
    {"kind": "train", "id": "train-3", "prompt": "What is 2 + 2?", "answer": "4", "completion": "5",
     "reward": 0.0, "advantage": -0.5, "length": 1, "finished": False, "info": {"correct": False}},
]
# What drive() logs, as the trackers should hold it: {metric: {step: value}}.
EXPECTED = {"reward/mean": {1: 0.5, 2: 0.75}, "actor/kl": {1: 0.01, 2: 0.02}, "eval/accuracy": {0: 0.25, 2: 0.5}}


def drive(run_dir, names):
    """A two-step run's worth of logging through RunLogger, the way the loops call it."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    log = RunLogger(run_dir, total_steps=2, console=False, trackers=names, config=CONFIG, project="rltrain-test",
                    run_name="drive")
    log.event(0, "eval", {"accuracy": 0.25, "pass@4": 0.5, "n": 8})
    log.log(1, {"reward/mean": 0.5, "actor/kl": 0.01, "time/step": 1.0})
    log.samples(1, "train", ROWS)
    log.log(2, {"reward/mean": 0.75, "actor/kl": 0.02, "time/step": 1.0})
    log.event(2, "eval", {"accuracy": 0.5, "pass@4": 0.75, "n": 8})
    log.summary([("held-out accuracy (greedy)", "25.0%", "50.0%")])
    log.close()
    return log


@trackers.register("raising")
class Raising(trackers.Tracker):
    """Starts and logs step 1, then raises on every later call: a service that goes away mid-run."""

    extra = "raising"

    def start(self, run):
        self.steps = []

    def log(self, step, metrics):
        if step >= 2:
            raise RuntimeError("tracker service went away\nsecond line of the error")
        self.steps.append(step)

    def summary(self, step, values, table):
        raise RuntimeError("never reached: dropped at step 2")

    def close(self):
        pass


@trackers.register("not_installed")
class NotInstalled(Raising):
    """A tracker whose package is missing."""

    extra = "not_installed"

    def start(self, run):
        import rltrain_tracker_package_that_is_not_installed  # noqa: F401


RELEASE = threading.Event()


@trackers.register("blocking")
class Blocking(Raising):
    """A tracker whose service hangs: every call waits until the test sets ``RELEASE``."""

    extra = "blocking"

    def log(self, step, metrics):
        RELEASE.wait()

    def close(self):
        RELEASE.wait()
