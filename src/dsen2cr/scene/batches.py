"""The run loop of a scene: windows read, preprocessed and predicted batch by batch, with the next batch read
in a background thread while the predictor runs (docs/design.md §4.4)."""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.readers import S2Source
from dsen2cr.inputs.s1 import S1Source
from dsen2cr.predictor import Predictor
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS, s1_db_to_model, s2_dn_to_model_into
from dsen2cr.rasters import gdal_block_cache
from dsen2cr.scene.journal import SceneJournal
from dsen2cr.scene.tiles import Tile
from dsen2cr.scene.time_limit import stop_if_warned

T = TypeVar("T")
#: A function from a batch of S2 (and S1) windows in model units to its predictions.
BatchFunction = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
#: What :func:`iter_predictions` yields per tile.
Prediction = tuple[Tile, np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]


def iter_predictions(
    predictor: Predictor | BatchFunction,
    s2: S2Source,
    s1: S1Source | None,
    tiles: list[Tile],
    *,
    batch_size: int,
    s1_fill_db: Callable[[], tuple[float, float]],
    on_batch: Callable[[int], object] | None = None,
    channels: int = NUM_S2_BANDS,
    journal: SceneJournal | None = None,
) -> Generator[Prediction, None, None]:
    """Run ``predictor`` (a function of a batch of S2 and S1 windows giving ``channels`` channels per window)
    over ``tiles``; yield (tile, prediction in model units, S2 DN, S2 valid mask, number of valid S2 pixels
    without S1, S2 DN of the whole window) per tile, all but the last cropped to the tile's core (the whole
    window is there for work that needs pixels around the core, the cloud/shadow map: it reads nothing again).

    Tiles whose core holds no valid S2 pixel (outside the swath, say) are not run: their prediction is zeros,
    and their output is nodata anyway. A reader thread reads and preprocesses the next batch while the
    predictor runs on this one (GDAL and numpy release the GIL); only that thread touches the sources while
    the loop runs. With a ``journal``, the batches a stopped run predicted are taken from it (their windows read
    again, not predicted), and each batch predicted is recorded in it.
    """
    batches = [tiles[first : first + batch_size] for first in range(0, len(tiles), batch_size)]
    pad_to = batch_size if len(tiles) > batch_size else len(tiles)

    reading = threading.Lock()  # held by a read while it runs
    stopped = False  # set when the loop ends: no read starts after it, so the caller may close the sources

    def read(group: list[Tile]) -> _Batch | None:
        with reading:
            if stopped:
                return None
            # rasterio.Env is per thread: without it here, a reader thread that first touches GDAL's block
            # cache would size it by GDAL's default (5 % of RAM) instead of the bound of remove_clouds.
            with gdal_block_cache():
                return _read_batch(s2, s1, group, s1_fill_db)

    try:
        yield from _run_batches(predictor, batches, pad_to, read, on_batch, channels, journal)
    finally:
        # The executor's shutdown waits only for the threads it knows of: a signal (Ctrl-C, SIGTERM) that
        # arrives while it starts its thread leaves that thread unknown to it but running its first read. Wait
        # here for any read still running and stop later ones: a read of a closed file crashes the process.
        with reading:
            stopped = True


def _run_batches(
    predictor: Predictor | BatchFunction,
    batches: list[list[Tile]],
    pad_to: int,
    read: Callable[[list[Tile]], _Batch | None],
    on_batch: Callable[[int], object] | None,
    channels: int,
    journal: SceneJournal | None,
) -> Iterator[Prediction]:
    """The loop of :func:`iter_predictions`: read the next batch on a reader thread while this one runs."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsen2cr-read") as reader:
        pending = reader.submit(read, batches[0]) if batches else None
        for index, group in enumerate(batches):
            assert pending is not None  # one read is submitted per batch
            batch = pending.result()
            assert batch is not None  # reads stop only once this loop has ended
            pending = reader.submit(read, batches[index + 1]) if index + 1 < len(batches) else None
            core_of = _predicted_cores(predictor, group, batch, pad_to, journal, index)
            for i, tile in enumerate(group):
                rows, cols = tile.core_in_tile()
                core_pred = core_of.get(i)
                if core_pred is None:
                    core_pred = np.zeros((channels, *batch.valid_cores[i].shape), np.float32)
                dn_core = batch.windows[i][:, rows, cols]
                yield tile, core_pred, dn_core, batch.valid_cores[i], batch.missing[i], batch.windows[i]
            if on_batch is not None:
                on_batch(len(group))
            stop_if_warned()  # SLURM's time-limit warning: the batch is recorded, the scene stops here


def _predicted_cores(
    predictor: Predictor | BatchFunction,
    group: list[Tile],
    batch: _Batch,
    pad_to: int,
    journal: SceneJournal | None,
    index: int,
) -> dict[int, np.ndarray]:
    """The predicted core of each window of batch ``index`` that is run (by its place in ``group``): from the
    ``journal`` where a stopped run predicted it, else from ``predictor`` (then recorded in the journal)."""
    if journal is not None and (recorded := journal.cores(index)) is not None:
        if len(recorded) != len(batch.run):
            raise DSen2CRError(f"{journal.folder}: batch {index} holds {len(recorded)} windows, not {len(batch.run)}")
        return dict(zip(batch.run, recorded, strict=True))
    cores: dict[int, np.ndarray] = {}
    if batch.s2_model is not None:  # some tile of the batch has valid pixels
        pred = predictor(*_pad_batch(batch.s2_model, batch.s1_model, pad_to))
        for row, i in enumerate(batch.run):
            rows, cols = group[i].core_in_tile()
            cores[i] = pred[row][:, rows, cols]
    if journal is not None:
        journal.record(index, len(group), [cores[i] for i in batch.run])
    return cores


class BackgroundWriter:
    """Runs submitted calls in order on one thread (under :func:`~dsen2cr.outputs.geotiff.gdal_block_cache`), so that
    converting and writing a tile overlaps the next prediction; at most ``depth`` calls wait. The first error
    is raised again by the next :meth:`submit` or on leaving the ``with`` block, which always waits for the
    thread (and the ``prepare`` threads): nothing writes after the block is left.

    With ``prepare_threads`` > 1, :meth:`submit_in_order` computes on that many threads side by side and
    writes on the one thread, in the order of the calls."""

    def __init__(self, depth: int, prepare_threads: int = 1) -> None:
        self._queue: queue.Queue[tuple[Callable[..., None], tuple] | None] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dsen2cr-write", daemon=True)
        self._pool = None
        if prepare_threads > 1:
            self._pool = ThreadPoolExecutor(max_workers=prepare_threads, thread_name_prefix="dsen2cr-prepare")

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        with gdal_block_cache():
            while (item := self._queue.get()) is not None:
                if self._error is None:  # after an error, drain without running
                    try:
                        item[0](*item[1])
                    except BaseException as error:  # handed to the submitting thread
                        self._error = error

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        """Queue ``fn(*args)`` (blocks while ``depth`` calls wait); raises an earlier call's error."""
        if self._error is not None:
            raise self._error
        self._queue.put((fn, args))

    def submit_in_order(self, prepare: Callable[..., T], write: Callable[[T], None], *args: object) -> None:
        """Queue ``write(prepare(*args))``: ``prepare`` on a prepare thread at once (or, with one, on the writer
        thread), ``write`` on the writer thread after the calls submitted before."""
        if self._pool is None:
            self.submit(lambda: write(prepare(*args)))
            return
        future = self._pool.submit(_in_block_cache, prepare, *args)
        self.submit(lambda: write(future.result()))

    def has_room(self) -> bool:
        """Whether :meth:`submit` would queue a call now without waiting (only the submitting thread queues)."""
        return not self._queue.full()

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._error is not None and exc_info[0] is None:
            raise self._error


def write_in_order(
    background: BackgroundWriter,
    predictions: Iterable[Prediction],
    prepare: Callable[..., T],
    write: Callable[[T], None],
    *,
    hold_bytes: int = 0,
    waiting: Callable[[], bool] = lambda: False,
) -> None:
    """Hand each prediction to ``background`` (``write(prepare(*prediction))``), in order. While ``waiting()``
    (the cloud mask's statistics pass, which the first ``prepare`` waits for), a prediction that finds the
    writer's queue full waits in memory, up to ``hold_bytes`` in all, instead of stopping the loop and with it the
    network; those held go on in order as the queue makes room, and the loop waits for the writer only when they
    pass ``hold_bytes``, or when none is held and nothing is awaited (as without holding: ``hold_bytes`` 0)."""
    held: collections.deque[Prediction] = collections.deque()
    held_bytes = 0
    for prediction in predictions:
        held.append(prediction)
        held_bytes += prediction_bytes(prediction)
        while held and (background.has_room() or held_bytes > hold_bytes or (len(held) == 1 and not waiting())):
            first = held.popleft()
            held_bytes -= prediction_bytes(first)
            background.submit_in_order(prepare, write, *first)
    for prediction in held:
        background.submit_in_order(prepare, write, *prediction)


def prediction_bytes(prediction: Prediction) -> int:
    """Memory a prediction keeps alive: its window's DN and its window of the batch's output (in float32; the
    core it carries is a view of it)."""
    window_dn, channels = prediction[5], prediction[1].shape[0]
    return window_dn.nbytes + window_dn[0].size * channels * 4


def _in_block_cache(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` with GDAL's block cache bounded as on the writer thread (``rasterio.Env`` is per
    thread)."""
    with gdal_block_cache():
        return function(*args)


@dataclass
class _Batch:
    """One batch as read: per tile the S2 DN of its window, the valid mask of its core and the valid pixels
    without S1; the model inputs of the tiles to run (those with valid pixels in their core), and their
    indices."""

    windows: list[np.ndarray]
    valid_cores: list[np.ndarray]
    missing: list[int]
    run: list[int]
    s2_model: np.ndarray | None
    s1_model: np.ndarray | None


def _read_batch(
    s2: S2Source, s1: S1Source | None, group: list[Tile], s1_fill_db: Callable[[], tuple[float, float]]
) -> _Batch:
    """Read and preprocess the windows of one batch (S1 only where the tile is run; its holes are filled
    with ``s1_fill_db()``, asked for only where there are holes)."""
    s2_dn = [s2.read(t.window) for t in group]
    cores = [t.core_in_tile() for t in group]
    valid = [s2.valid(dn) for dn in s2_dn]
    valid_cores = [v[rows, cols] for v, (rows, cols) in zip(valid, cores, strict=True)]
    run = [i for i, v in enumerate(valid_cores) if v.any()]
    missing = [0] * len(group)
    s2_model = s1_model = None
    if run:
        s2_model = np.empty((len(run), *s2_dn[run[0]].shape), np.float32)
        for row, i in enumerate(run):
            dn = s2_dn[i]
            if dn.dtype.kind == "f":  # NaN is nodata: 0 DN (integer DN have none)
                dn = np.nan_to_num(dn.astype(np.float32), copy=False)
            s2_dn_to_model_into(dn, s2_model[row])
    if s1 is not None and run:
        s1_model = np.empty((len(run), NUM_S1_BANDS, *s2_dn[run[0]].shape[1:]), np.float32)
        for row, i in enumerate(run):
            db = s1.read(group[i].window)
            rows, cols = cores[i]
            missing[i] = int((np.isnan(db).any(axis=0) & valid[i])[rows, cols].sum())
            holes = np.isnan(db)
            if holes.any():
                fill = s1_fill_db()
                for band in range(NUM_S1_BANDS):
                    db[band][holes[band]] = fill[band]
            s1_model[row] = s1_db_to_model(db)
    return _Batch(s2_dn, valid_cores, missing, run, s2_model, s1_model)


def _pad_batch(s2: np.ndarray, s1: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad a short last batch with zeros to ``size`` so that compiled backends see one shape (outputs beyond
    the real tiles are ignored)."""
    missing = size - s2.shape[0]
    if missing <= 0:
        return s2, s1
    pad = lambda a: np.concatenate([a, np.zeros((missing, *a.shape[1:]), a.dtype)])  # noqa: E731
    return pad(s2), None if s1 is None else pad(s1)
