"""The project's user-facing error type."""

from __future__ import annotations

import re


class DSen2CRError(Exception):
    """A problem with the user's input, files or settings, reported as one line without a traceback.

    Messages name the file (or argument) and what is wrong with it.
    """


#: How PyTorch's DataLoader re-raises an exception of a worker process: the type, then the worker's whole
#: traceback in the message, ending with the original ``module.Type: message`` line.
_WORKER_TRACEBACK = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\s*Original Traceback", re.DOTALL)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line; for an error re-raised from a DataLoader worker, the original
    message only (not the worker's traceback folded into the line)."""
    text = str(error)
    if _WORKER_TRACEBACK.search(text):
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split()) or type(error).__name__
