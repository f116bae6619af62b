"""The project's user-facing error type."""

from __future__ import annotations

import re
from collections.abc import Callable


class DSen2CRError(Exception):
    """A problem with the user's input, files or settings, reported as one line without a traceback.

    Messages name the file (or argument) and what is wrong with it.
    """


class RunWideError(DSen2CRError):
    """A refusal that every process of a multi-process run reaches alike, from what they share (the settings, the
    file lists, the number of processes): rank 0 says it, and the processes it launched stop without repeating
    it (each of eight GPUs' processes printed the line). Not for what one process meets alone (a patch it reads,
    its machine's shared memory): that process's line is the only one that says why the run stopped."""


class HalfPrecisionOverflowError(DSen2CRError):
    """A 16-bit precision that ``--precision auto`` chose overflowed on a batch after the first (whose check it
    passed). ``fall_back`` drops it: the next batch settles the float32 arithmetic auto falls back to, checked as
    the first was; a scene run starts the scene again (what it wrote is removed with the error)."""

    def __init__(self, message: str, fall_back: Callable[[], None]) -> None:
        super().__init__(message)
        self.fall_back = fall_back


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
