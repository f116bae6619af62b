"""The warnings a command says while it runs, kept for its report: a report is read without the console's log.

A warning that the report already says in its own words is logged with ``extra={SAID_IN_REPORT: True}`` and is
not kept again."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

#: The log record attribute that marks a warning the report says in its own words (not listed again).
SAID_IN_REPORT = "said_in_report"
#: The most warnings a report lists (a run that warns of every patch would bury the report in them).
MAX_LISTED = 30


class _Keeper(logging.Handler):
    """Keeps each warning's message once, in the order said."""

    def __init__(self, said: list[str], skip_threads: str | None) -> None:
        super().__init__(logging.WARNING)
        self.said = said
        self.seen = set(said)  # membership of the list in O(1): a run may warn of every one of thousands of patches
        self.skip_threads = skip_threads

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record``'s message unless kept already, said in the report's own words or said by a thread left
        out."""
        if getattr(record, SAID_IN_REPORT, False):
            return
        if self.skip_threads and (record.threadName or "").startswith(self.skip_threads):
            return
        message = record.getMessage()
        if message not in self.seen:
            self.seen.add(message)
            self.said.append(message)


@contextlib.contextmanager
def warnings_said(
    earlier: Sequence[str] = (), logger: str = "dsen2cr", *, skip_threads: str | None = None
) -> Iterator[list[str]]:
    """The warnings ``logger`` (and those below it) says inside the block, each once, after ``earlier`` (what
    was said before, kept once each): a list that grows while the block runs. ``skip_threads``: the name prefix of
    threads whose warnings are not the block's (another job's, running beside it)."""
    said = list(dict.fromkeys(earlier))  # each once, in order
    keeper = _Keeper(said, skip_threads)
    target = logging.getLogger(logger)
    target.addHandler(keeper)
    try:
        yield said
    finally:
        target.removeHandler(keeper)


def warnings_markdown(said: Sequence[str]) -> str:
    """A report's list of the warnings ``said`` (at most :data:`MAX_LISTED`, the rest counted), or nothing."""
    if not said:
        return ""
    listed = "".join(f"- {message}\n" for message in said[:MAX_LISTED])
    more = f"- … and {len(said) - MAX_LISTED} more (on the console)\n" if len(said) > MAX_LISTED else ""
    return f"\nWarnings said while it ran (as the console said them):\n\n{listed}{more}"
