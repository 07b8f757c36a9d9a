"""Reading raw rows from local files (jsonl / json / parquet) or a Hugging Face Hub dataset.

Local files are read with the standard library and pyarrow rather than ``datasets`` so that
every row keeps its line number (jsonl) or index (json, parquet) for error messages. Hub
datasets go through ``datasets.load_dataset``; when the hub cannot be reached the loader fails
at once with one message naming ``data.path`` instead of retrying for half a minute.
"""
from __future__ import annotations

import json
import os
import socket
import urllib.parse
from pathlib import Path

from rltrain.data.base import DataError, Row, split_by_fraction

LOCAL_FORMATS = (".jsonl", ".json", ".parquet")
_PROBE_TIMEOUT_S = 3.0


def read_local_rows(path: str | os.PathLike) -> list[Row]:
    """All rows of a local ``.jsonl``, ``.json`` (a list of objects, or JSON Lines) or
    ``.parquet`` file, each tagged with its location.

    Raises:
        DataError: missing file, unknown suffix, a line that is not JSON, or a row that is
            not an object; the message names the file and the line or row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_json_lines(path)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # several JSON values: JSON Lines in a .json file
                return _read_json_lines(path)
            raise DataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
        return [_as_row(record, f"{path}, row {i}") for i, record in enumerate(records)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
        return [_as_row(record, f"{path}, row {i}") for i, record in enumerate(records)]
    raise DataError(f"{path}: unsupported data file type {suffix!r}; use one of {LOCAL_FORMATS}")


def _read_json_lines(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
            rows.append(_as_row(record, where))
    return rows


def _as_row(record: object, where: str) -> Row:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return Row(where=where, data=record)


def hub_unreachable() -> str | None:
    """Why the hub endpoint cannot be reached, or ``None`` if it can (or we cannot tell).

    A 3-second TCP probe; ``datasets`` itself would retry a failed DNS lookup for ~25 s.
    Skipped in HF offline mode (``datasets`` then fails at once unless the data is cached)
    and behind a proxy (the direct route tells nothing).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urllib.parse.urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc})"
    return None


def offline_message(hub_id: str, cause: str) -> str:
    from huggingface_hub import constants

    cached = ("" if constants.HF_HUB_OFFLINE else
              " If the dataset is in your local Hugging Face cache, set HF_HUB_OFFLINE=1 to load it from there.")
    return (
        f"could not load data.hub_id={hub_id!r} from the Hugging Face Hub: {cause}. "
        "To use local files instead, set data.path=/path/to/train.jsonl (jsonl, json or "
        "parquet; optionally data.test_path=/path/to/test.jsonl)." + cached
    )


def read_hub_rows(hub_id: str, hub_config: str | None, split: str) -> list[Row]:
    """All rows of one split of a hub dataset.

    Raises:
        DataError: the hub is unreachable or the load failed; the message names ``data.path``.
    """
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise DataError(offline_message(hub_id, unreachable))
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, hub_config, split=split)
    except Exception as exc:  # noqa: BLE001 - any load failure gets the same actionable message
        raise DataError(offline_message(hub_id, f"{type(exc).__name__}: {exc}")) from exc
    return [Row(where=f"{hub_id} [{split}], row {i}", data=dict(r)) for i, r in enumerate(dataset)]


def read_splits(
    *,
    path: str | None,
    test_path: str | None,
    test_fraction: float,
    hub_id: str | None,
    hub_config: str | None,
    train_split: str,
    test_split: str | None,
    seed: int,
) -> tuple[list[Row], list[Row]]:
    """Train and test rows from local files (when ``path`` is set) or from the hub.

    Local: ``path`` is train; ``test_path`` is test, or else a seeded ``test_fraction`` of
    ``path`` is held out. Hub: splits ``train_split`` and ``test_split``; with
    ``test_split=None`` a ``test_fraction`` of the train split is held out.
    """
    if path is not None:
        train = read_local_rows(path)
        if test_path is not None:
            return train, read_local_rows(test_path)
        return split_by_fraction(train, test_fraction, seed)
    if test_path is not None:
        raise DataError("data.test_path is set but data.path is not; set data.path=<train file>")
    if hub_id is None:
        raise DataError("no data source: set data.path=/path/to/train.jsonl or data.hub_id=<id>")
    train = read_hub_rows(hub_id, hub_config, train_split)
    if test_split is not None:
        return train, read_hub_rows(hub_id, hub_config, test_split)
    return split_by_fraction(train, test_fraction, seed)

