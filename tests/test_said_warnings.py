"""The warnings a command says while it runs, kept for its report (dsen2cr.said_warnings), checked by hand."""

from __future__ import annotations

import logging
import threading

from dsen2cr.said_warnings import MAX_LISTED, SAID_IN_REPORT, warnings_markdown, warnings_said


def test_warnings_are_kept_once_in_order_from_the_package_only() -> None:
    """Each message once, in the order first said, after the earlier ones; info lines, other packages' loggers,
    warnings marked as said in the report's own words and those after the block are not kept."""
    log = logging.getLogger("dsen2cr.some.module")
    with warnings_said(earlier=("before", "before")) as said:
        log.warning("first %d", 1)
        log.info("not a warning")
        log.warning("second")
        log.warning("first %d", 1)
        logging.getLogger("lightning").warning("another package's")
        log.warning("in the report's words", extra={SAID_IN_REPORT: True})
        log.error("an error is kept too")
    log.warning("after the block")
    assert said == ["before", "first 1", "second", "an error is kept too"]


def test_a_thread_left_out_by_its_name_is_not_kept() -> None:
    """What the thread that completes the previous scene's files says (``dsen2cr-finish``) is not this scene's."""
    log = logging.getLogger("dsen2cr.outputs")
    with warnings_said(skip_threads="dsen2cr-finish") as said:
        for name in ("dsen2cr-finish_0", "dsen2cr-read_0"):
            thread = threading.Thread(target=log.warning, args=(f"from {name}",), name=name)
            thread.start()
            thread.join()
    assert said == ["from dsen2cr-read_0"]


def test_the_markdown_lists_at_most_its_share() -> None:
    """Nothing for no warning; at most MAX_LISTED listed, the rest counted."""
    assert warnings_markdown([]) == ""
    many = [f"w{n}" for n in range(MAX_LISTED + 3)]
    text = warnings_markdown(many)
    assert text.count("\n- w") == MAX_LISTED and text.endswith("- … and 3 more (on the console)\n")
