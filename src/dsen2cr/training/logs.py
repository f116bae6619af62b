"""A run's logs: the warnings it said (``logs/warnings.log``), and its CSV log that keeps its history: Lightning's
CSV writer deletes ``metrics.csv`` when its folder exists, so a resumed run kept only the epochs after the resume.
Here the rows before the resumed checkpoint's step stay (those from it on belonged to the interrupted part, which
runs again), and new rows are appended."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from dsen2cr.launch import is_launched_worker
from dsen2cr.outputs.files import atomic_path


class HistoryCSVLogger(CSVLogger):
    """A ``CSVLogger`` whose ``metrics.csv`` keeps the rows before ``keep_until_step`` (a resumed run: the
    checkpoint's global step; None: a new run, which starts the file afresh)."""

    def __init__(self, *args: object, keep_until_step: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.keep_until_step = keep_until_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (made on first use and on rank 0 only, as Lightning's: under DDP the other ranks cut the
        history too, and two processes rewrote ``metrics.csv`` at once)."""
        if not isinstance(self._experiment, _HistoryWriter):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self.keep_until_step)
        return self._experiment


class _HistoryWriter(ExperimentWriter):
    """Lightning's writer, but an existing ``metrics.csv`` is cut to the kept steps instead of deleted."""

    def __init__(self, log_dir: str, keep_until_step: int | None) -> None:
        self._keep_until_step = keep_until_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep the history (called by Lightning's ``__init__`` before anything is written)."""
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self._keep_until_step is None:
            os.remove(path)  # a new run in this folder: its log starts afresh
            return
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        # a batch's row carries the batches before it (an epoch's rows, its last batch's): the row at the
        # checkpoint's global step is the first batch after it, which the resumed run trains and logs again
        kept = [row for row in rows if row.get("step") and float(row["step"]) < self._keep_until_step]
        self.metrics_keys = sorted(set().union(*kept)) if kept else []
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)


#: A run's warnings, each with when it was said, in its folder (appended by every start: resumes, requeues).
WARNINGS_LOG = "warnings.log"


@contextlib.contextmanager
def warnings_kept(out: Path, earlier: Sequence[str]) -> Iterator[None]:
    """Keep the warnings a run says in ``out/logs/warnings.log`` (rank 0; a launched worker keeps none): those said
    before its folder was ready (``earlier``), then those said inside the block, one a line after the time (UTC):
    a run's folder is read after the job, its console long gone."""
    if is_launched_worker():
        yield
        return
    path = out / "logs" / WARNINGS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    for message in earlier:
        handler.emit(logging.LogRecord("dsen2cr", logging.WARNING, __file__, 0, message, None, None))
    target = logging.getLogger("dsen2cr")
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)
        handler.close()
