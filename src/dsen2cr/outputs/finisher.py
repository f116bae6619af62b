"""Completing a scene's outputs (the COG copy, the renames): at once on a CPU, or on one background thread
while the next scene is predicted on a GPU (docs/design.md §4.4)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from dsen2cr.rasters import gdal_block_cache

#: A scene's report: a dataclass with the ``seconds`` the scene took (``dsen2cr.scene.remove.SceneReport``).
Report = Any
#: The name of the thread that completes a scene's outputs while the next scene runs (its warnings are not the next
#: scene's: ``dsen2cr.scene.remove`` leaves them out of its tags).
FINISH_THREAD = "dsen2cr-finish"


def completes_in_background(device: torch.device) -> bool:
    """Whether scenes' outputs are completed while the next scene runs: on a GPU, whose network leaves the CPU
    idle; not on a CPU, whose network uses every core (overlapping measured slower there: benchmarks.pipeline,
    0.90x on 2 cores)."""
    return device.type == "cuda"


class OutputFinisher:
    """Completes each scene's outputs (the COG copy, the renames), with ``background`` on one thread while the
    next scene is predicted, so that on a GPU the CPU-bound compression of a scene overlaps the next scene's
    network; without, at once.

    At most one scene is being completed: :meth:`submit` first waits for the previous one and returns its
    report (seconds including its completion) before starting the new one's. When the previous one failed,
    the new one's outputs are removed and the error raised.
    """

    def __init__(self, *, background: bool = True) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=FINISH_THREAD) if background else None
        self._pending: tuple[Report, Future[float]] | None = None

    def submit(self, report: Report, outputs: contextlib.ExitStack) -> Report | None:
        """Start completing ``outputs`` (of ``report``'s scene); return the previous scene's report, complete
        (in the foreground: this one's)."""
        if self._executor is None:
            return dataclasses.replace(report, seconds=report.seconds + _complete(outputs))
        try:
            done = self.wait()
        except BaseException as error:
            outputs.__exit__(type(error), error, error.__traceback__)  # removes this scene's temporary files
            raise
        self._pending = (report, self._executor.submit(_complete, outputs))
        return done

    def wait(self) -> Report | None:
        """Wait for the scene being completed, if any, and return its report (or raise its error)."""
        if self._pending is None:
            return None
        report, future = self._pending
        self._pending = None
        return dataclasses.replace(report, seconds=report.seconds + future.result())

    def close(self) -> None:
        """Wait for any completion still running (a COG copy cannot be interrupted) and stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _complete(outputs: contextlib.ExitStack) -> float:
    """Close ``outputs`` (COG copy and renames) under the scene's GDAL settings; return the seconds taken."""
    start = time.perf_counter()
    with gdal_block_cache():
        outputs.close()
    return time.perf_counter() - start
