"""The messages of GDAL's own threads, kept from stderr and given with the failure they explain.

rasterio installs its error handler per thread, in the threads that entered its environment; GDAL's own threads (a
remote file's read-ahead, multi-threaded decoding) report through GDAL's default handler, which printed them to the
process's stderr (``ERROR 1: Request for 3346-3631 failed with response_code=403``) beside the command's one line,
while the read that waited on them failed with another reason (the decoder's complaint about the bytes it did not
get). GDAL's default handler writes to the file its ``CPL_LOG`` option names: this process's own file, removed at
exit, from which a failed read takes the last error written while it ran (:func:`last_thread_error`). No heavy
import: the command line sets it up before any command runs.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

#: GDAL's option naming the file its default error handler writes to (read from the environment, first use).
LOG_OPTION = "CPL_LOG"


def capture_thread_messages() -> None:
    """Send what GDAL's default error handler prints to a file of this process (``CPL_LOG``), removed at exit. A
    ``CPL_LOG`` or ``CPL_DEBUG`` set in the environment (the user's, or the parent process's) is left alone."""
    if LOG_OPTION in os.environ or "CPL_DEBUG" in os.environ:
        return
    try:
        handle, path = tempfile.mkstemp(prefix=f"dsen2cr-gdal-{os.getpid()}-", suffix=".log")
    except OSError:  # no writable temporary folder (a read-only container): GDAL prints them as it does
        return
    os.close(handle)
    os.environ[LOG_OPTION] = path
    atexit.register(Path(path).unlink, missing_ok=True)


def _log_path() -> str | None:
    """The file GDAL's default handler writes to, where it is one to read (not stderr, not the null device)."""
    path = os.environ.get(LOG_OPTION)
    return None if not path or path == os.devnull else path


def log_position() -> int:
    """Where the ``CPL_LOG`` file ends now (0 without one): what :func:`last_thread_error` reads after."""
    path = _log_path()
    if path is None:
        return 0
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def last_thread_error(since: int) -> str | None:
    """The last error GDAL's default handler wrote to the ``CPL_LOG`` file after position ``since``
    (:func:`log_position` before the call that failed), without its ``ERROR n:`` prefix; None if none."""
    path = _log_path()
    if path is None:
        return None
    try:
        with open(path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(since if since <= size else 0, size - 4096))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return None
    errors = [line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("ERROR ")]
    return errors[-1] if errors else None
