"""Experiment trackers (``log.trackers``), each for real and offline: what RunLogger sends (the
config, step metrics, evaluation events, samples tables, the summary) is read back from what the
tracker wrote. A tracker that fails — not installed, raising mid-run, hanging — is dropped with
one warning line while the run and metrics.jsonl go on (the raising one through the real command,
exit code 0). A tracker's test skips only where its package is absent, naming the extra."""
import glob
import json
import os
import struct
import subprocess
import sys
import time

import pytest

from rltrain.report import trackers
from rltrain.report.logger import RunLogger
from tests.cli import REPO, TINY, events, metrics
from tests.report import tracker_support
from tests.report.tracker_support import EXPECTED, ROWS, drive

def needs(package: str, extra: str):
    return pytest.importorskip(package, reason=f"{package} is not installed (pip install 'rltrain[{extra}]')")


def no_tracker_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "tracker" in r.getMessage()] == []


# --------------------------------------------------------------------------- each tracker, read back


def test_tensorboard_round_trip(tmp_path, caplog):
    needs("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    drive(tmp_path, ["tensorboard"])
    assert no_tracker_warnings(caplog)
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    for key, want in EXPECTED.items():
        assert {e.step: round(e.value, 6) for e in ea.Scalars(key)} == want, key
    assert {e.step: e.value for e in ea.Scalars("eval/pass@4")} == {0: 0.5, 2: 0.75}
    assert [(e.step, e.value) for e in ea.Scalars("summary/final_eval/accuracy")] == [(2, 0.5)]
    text = lambda tag: [e.tensor_proto.string_val[0].decode() for e in ea.Tensors(f"{tag}/text_summary")]  # noqa: E731
    assert "kl_coef: 0.0" in text("config")[0]
    table = text("samples/train")[0]
    assert "What is 2 + 2?" in table and "| 5 |" in table and "-0.5" in table
    assert "25.0% | 50.0%" in text("summary")[0]


def _wandb_records(run_dir):
    """The records of an offline W&B run's transaction log (``run-<id>.wandb``: W&B's LevelDB-style
    log, 32 KiB blocks of [crc32 4 B, length 2 B, type 1 B, data]) as ``Record`` protos."""
    from wandb.proto import wandb_internal_pb2 as pb

    path, = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return path, out


def test_wandb_offline_round_trip(tmp_path, monkeypatch, caplog):
    needs("wandb", "wandb")
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "cfg",
                 "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(k, str(v))
    drive(tmp_path, ["wandb"])
    assert no_tracker_warnings(caplog)
    # run.finish() can return before W&B's service has flushed the transaction log to disk (a CI run read a
    # log without its run record): shut the service down, then wait for the log's exit record.
    import wandb
    wandb.teardown()
    deadline = time.monotonic() + 60
    while True:
        path, records = _wandb_records(tmp_path)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "run" in kinds and "exit" in kinds, f"{path} ({os.path.getsize(path)} bytes) holds only {kinds}"
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == ("rltrain-test", "drive")
    assert run.run_id == json.loads((tmp_path / "trackers.json").read_text())["wandb"]  # a resumed run continues it
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["algo"] == {"name": "grpo", "kl_coef": 0.0} and config["eval"] == {"k": [1, 4]}
    history: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            item = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for k, v in item.items():
                history.setdefault(k, {})[item["_step"]] = v
    for key, want in EXPECTED.items():
        assert history[key] == want, key
    assert history["samples/train/_type"] == {1: "table-file"}
    table, = glob.glob(os.path.join(os.path.dirname(path), "files", "media", "table", "samples", "train_1_*.json"))
    t = json.loads(open(table).read())
    assert t["columns"] == trackers.TABLE_COLUMNS
    col = {c: [row[i] for row in t["data"]] for i, c in enumerate(t["columns"])}
    assert col["completion"] == ["4\x1b[2J", "5"] and col["reward"] == [1.0, 0.0] and col["advantage"] == [0.5, -0.5]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in r.summary.update})
    assert summary["final_eval/accuracy"] == 0.5 and summary["steps"] == 2.0
    assert summary["summary/held-out accuracy (greedy)"] == "25.0% → 50.0%"


TRACKIO_READ = """
import json, sys
sys.path.insert(0, {repo!r})
from tests.report.tracker_support import drive
drive({run_dir!r}, ["trackio"])
from trackio.sqlite_storage import SQLiteStorage
print("RESULT" + json.dumps({{"logs": SQLiteStorage.get_logs("rltrain-test", "drive"),
                             "config": SQLiteStorage.get_run_config("rltrain-test", "drive")}}, default=str))
"""


def test_trackio_local_round_trip(tmp_path):
    """In a child process: Trackio fixes its store directory (TRACKIO_DIR) when it is imported."""
    needs("trackio", "trackio")
    out = subprocess.run([sys.executable, "-c", TRACKIO_READ.format(repo=str(REPO), run_dir=str(tmp_path / "run"))],
                         env=dict(os.environ, TRACKIO_DIR=str(tmp_path / "store")), capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tracker" not in out.stderr, out.stderr  # no tracker was dropped
    got = json.loads(out.stdout.split("RESULT", 1)[1])
    assert (tmp_path / "store" / "rltrain-test.db").exists()
    history: dict = {}
    for row in got["logs"]:
        for k, v in row.items():
            history.setdefault(k, {})[row["step"]] = v
    for key, want in EXPECTED.items():
        assert history[key] == want, key
    table = history["samples/train"][1]["_value"]
    assert [r["completion"] for r in table] == ["4\x1b[2J", "5"] and [r["reward"] for r in table] == [1.0, 0.0]
    assert history["summary/final_eval/accuracy"] == {2: 0.5}
    assert got["config"]["algo"] == {"name": "grpo", "kl_coef": 0.0}


def test_mlflow_sqlite_round_trip(tmp_path, monkeypatch, caplog):
    needs("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts in ./mlruns
    drive(tmp_path / "run", ["mlflow"])
    assert no_tracker_warnings(caplog)
    c = MlflowClient(tracking_uri=uri)
    run, = c.search_runs([c.get_experiment_by_name("rltrain-test").experiment_id])
    assert run.info.run_name == "drive" and run.info.status == "FINISHED"
    assert run.info.run_id == json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]
    assert run.data.params["algo.name"] == "grpo" and run.data.params["eval.k"] == "[1, 4]"
    for key, want in EXPECTED.items():
        assert {m.step: m.value for m in c.get_metric_history(run.info.run_id, key)} == want, key
    assert {m.step: m.value for m in c.get_metric_history(run.info.run_id, "eval/pass_4")} == {0: 0.5, 2: 0.75}
    assert run.data.metrics["summary/final_eval/accuracy"] == 0.5
    assert run.data.tags["summary/held-out accuracy _greedy_"] == "25.0% → 50.0%"
    (tmp_path / "dl").mkdir()
    table = json.loads(open(c.download_artifacts(run.info.run_id, "samples/train_step_000001.json",
                                                 str(tmp_path / "dl"))).read())
    col = {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}
    assert col["completion"] == ["4\x1b[2J", "5"] and col["reward"] == [1.0, 0.0]


# --------------------------------------------------------------------------- failures never stop a run


def _tracker_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if f"tracker {name} dropped" in line]


def test_a_tracker_that_raises_mid_run_leaves_the_run_and_metrics_jsonl_whole(tmp_path):
    """The real command with a tracker that raises from step 2 on, next to TensorBoard: exit code 0,
    every step and evaluation in metrics.jsonl, one warning line, TensorBoard still gets every step."""
    args = TINY + ["train.steps=3", "eval.size=4", "log.trackers=[raising,tensorboard]"]
    code = ("import sys; import tests.report.tracker_support; from rltrain.cli import main; "
            f"sys.argv = ['rltrain', *{args!r}, 'hydra.run.dir={tmp_path}']; main()")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    lines = _tracker_lines(out, "raising")
    assert len(lines) == 1, out[-4000:]
    assert "log failed: RuntimeError: tracker service went away" in lines[0] and "second line" not in out
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3]
    assert [(e["event"], e["step"]) for e in events(tmp_path)] == [("eval", 0), ("eval", 3)]
    if _has("tensorboard"):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(tmp_path / "tensorboard"))
        ea.Reload()
        assert [e.step for e in ea.Scalars("reward/mean")] == [1, 2, 3]


def _has(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def test_a_tracker_whose_package_is_missing_is_one_warning_naming_the_extra(tmp_path, caplog):
    log = drive(tmp_path, ["not_installed"])
    lines = _tracker_lines(caplog.text, "not_installed")
    assert len(lines) == 1 and "pip install 'rltrain[not_installed]'" in lines[0], caplog.text
    assert log.trackers[0].failed
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("event")) for r in rows] == [(0, "eval"), (1, None), (2, None), (2, "eval")]


def test_a_hanging_tracker_never_holds_up_the_loop(tmp_path, monkeypatch, caplog):
    """Every call into a tracker whose service hangs returns at once; when it falls QUEUE calls
    behind it is dropped (one line), and closing the run waits at most CLOSE_TIMEOUT_S for it."""
    monkeypatch.setattr(trackers.TrackerThread, "QUEUE", 4)
    monkeypatch.setattr(trackers, "CLOSE_TIMEOUT_S", 0.2)
    tracker_support.RELEASE.clear()
    try:
        log = RunLogger(tmp_path, total_steps=20, console=False, trackers=["blocking"])
        t0 = time.perf_counter()
        for step in range(1, 21):
            log.log(step, {"reward/mean": step / 20})
            log.samples(step, "train", ROWS)
        assert time.perf_counter() - t0 < 1.0  # 40 calls into a tracker that never answers
        t0 = time.perf_counter()
        log.close()
        assert time.perf_counter() - t0 < 1.0
    finally:
        tracker_support.RELEASE.set()
    lines = _tracker_lines(caplog.text, "blocking")
    assert len(lines) == 1 and "fell 4 calls behind" in lines[0], caplog.text
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(range(1, 21))
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 40


def test_a_tracker_that_hangs_at_the_end_is_waited_for_at_most_close_timeout(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(trackers, "CLOSE_TIMEOUT_S", 0.2)
    tracker_support.RELEASE.clear()
    try:
        log = RunLogger(tmp_path, total_steps=1, console=False, trackers=["blocking"])
        t0 = time.perf_counter()
        log.close()  # the tracker's close hangs
        assert time.perf_counter() - t0 < 1.0
    finally:
        tracker_support.RELEASE.set()
    lines = _tracker_lines(caplog.text, "blocking")
    assert len(lines) == 1 and "did not finish within 0.2 s" in lines[0], caplog.text


# --------------------------------------------------------------------------- config


def _validate(*overrides):
    from rltrain.cli import compose_or_explain, to_run_config
    from rltrain.config import register_configs, validate

    register_configs()
    validate(to_run_config(compose_or_explain(list(overrides))))


def test_an_unknown_tracker_fails_validation_listing_the_valid_names():
    from rltrain.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _validate("log.trackers=[tensorboard,wandbb]")
    msg = str(err.value)
    assert msg.startswith("log.trackers='wandbb' is not valid; choose one of:")
    assert all(n in msg for n in ("mlflow", "tensorboard", "trackio", "wandb"))
    with pytest.raises(ConfigError, match="names a tracker twice"):
        _validate("log.trackers=[wandb,wandb]")
    with pytest.raises(ConfigError, match="log.samples_max_mb=0.0 must be > 0"):
        _validate("log.samples_max_mb=0")
    _validate("log.trackers=[tensorboard,wandb,trackio,mlflow]")  # valid without any of them installed


def test_every_tracker_names_its_extra_in_pyproject():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("tensorboard", "wandb", "trackio", "mlflow"):
        cls = trackers.TRACKERS[name]
        assert cls.extra in extras and any(d.startswith(name) for d in extras[cls.extra]), name
