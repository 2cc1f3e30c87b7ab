"""Report files: markdown, JSON and CSV, written atomically, plus ``latest.*``.

Every file is written to a temporary name in its directory and moved into
place with ``os.replace``, so a reader (or a crash) never sees half a file.
The JSON holds every figure and the full histories under a schema version;
:func:`load_report` reads it back (and refuses what it does not understand).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from pytest_batchprof.reports.tables import Row

SCHEMA = "pytest-batchprof/report"
SCHEMA_VERSION = 1


class ReportError(ValueError):
    """A report file that cannot be used; the message names the path."""


TEMPORARY_SUFFIX = ".tmp"
"""The suffix of the temporary file :func:`atomic_file` writes beside its target."""


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; it replaces ``path`` in one step.

    The content goes to a temporary file beside ``path`` (``.NAME.PID-RANDOM.tmp``),
    which ``os.replace`` moves over ``path`` when the ``with`` block ends: a
    reader sees the old file or the new one, never half of one. If the block
    raises, the temporary file is removed and ``path`` is left as it was. The
    file is created with mode ``x``, so it gets the umask's permissions, as a
    plain ``open`` would (``mkstemp`` would make a report unreadable to others).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(
        f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "xb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def copy_atomic(source: Path, target: Path) -> Path:
    """Copy ``source`` over ``target`` atomically (``latest.md`` and friends)."""
    return write_atomic(target, source.read_bytes())


def environment(settings: dict[str, object], device: str,
                rows: Sequence[Row] = ()) -> dict[str, object]:
    """Where and how the session ran: the header of every report.

    Its ``data sets`` are the ones ``rows`` used, as its device is the runs' own (a
    test's marker picks its data set): each named once, with the row's ``data_note``
    (e.g. a data set smaller than ``--batchprof-train-subset``, used whole). The
    ``dataset`` option, the data set of tests that name none, is listed only when a run
    used it, so that the header never names a data set nothing ran on.
    """
    import torch  # only once a session has trained something to report

    used: dict[str, str | None] = {}
    for row in rows:
        if row.get("dataset") is not None and used.get(str(row["dataset"])) is None:
            used[str(row["dataset"])] = row.get("data_note")
    default = settings.get("dataset")
    if rows and not any(name == default or name.startswith(f"{default}(") for name in used):
        settings = {key: value for key, value in settings.items() if key != "dataset"}
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": ", ".join(dict.fromkeys(  # one name per model of GPU the runs used
            torch.cuda.get_device_name(torch.device(name)) for name in device.split(", ")
            if name.startswith("cuda"))) or "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        **({"data sets": ", ".join(name if note is None else f"{name} ({note})"
                                   for name, note in used.items())} if used else {}),
        **{f"option {key}": value for key, value in settings.items()},
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report_json(rows: Sequence[Row], columns: Sequence[str], env: dict[str, object],
                partial: bool) -> str:
    """The JSON document of a session: every figure, full histories, schema version."""
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "partial": partial,
        "environment": env,
        "columns": list(columns),
        "rows": list(rows),
    }
    return json.dumps(document, indent=2, default=str, allow_nan=False) + "\n"


def report_csv(rows: Sequence[Row]) -> str:
    """One line per run with every scalar figure (histories and dicts as JSON text)."""
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row if key not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: json.dumps(value) if isinstance(value, list | tuple | dict)
                         else value
                         for key, value in row.items()})
    return buffer.getvalue()


def load_report(path: Path) -> dict[str, object]:
    """Read a report JSON back; raise :class:`ReportError` naming ``path`` if it is unusable."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not a pytest-batchprof report (no schema {SCHEMA!r})")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"{path}: schema version {document.get('schema_version')!r}; "
                          f"this pytest-batchprof reads version {SCHEMA_VERSION}")
    if not isinstance(document.get("rows"), list) or not isinstance(document.get("columns"),
                                                                      list):
        raise ReportError(f"{path}: has no rows or columns")
    if not all(isinstance(row, dict) for row in document["rows"]) or not isinstance(
            document.get("environment", {}), dict):
        raise ReportError(f"{path}: its rows or environment are not JSON objects")
    return document


def session_stem(now: datetime | None = None) -> str:
    """``batchprof-20261122-034500``: report files of one session share it."""
    return f"batchprof-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
