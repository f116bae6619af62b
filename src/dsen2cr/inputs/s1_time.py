"""When S1 was sensed (and on which pass), and how far in time it lies from the S2 scene it stands in for under the
clouds (docs/design.md §4.5). DSen2-CR takes S1 of about the scene's date: what the network puts under a cloud follows
the ground as S1 saw it, so the further apart the two, the more that ground may have changed (a harvest, a flood,
snow)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import is_stac, s1_frames, s1_parts
from dsen2cr.inputs.geotiff import tagged_sensing_time
from dsen2cr.inputs.product import GIVE_SENSING_TIME, UNKNOWN_SENSING_TIME, days_between, sensing_time_of_name
from dsen2cr.inputs.stac import item_properties, item_time

log = logging.getLogger(__name__)

#: Metadata that says when an S1 file was sensed: a dsen2cr patch's, then what GDAL's SAFE (Sentinel-1) driver
#: reads from a product, which exports made with GDAL carry on.
S1_SENSING_TIME_TAGS = ("DSEN2CR_SENSING_TIME", "ACQUISITION_START_TIME")
#: Why S1's sensing time is unknown, and how to give it.
UNKNOWN_S1_TIME = (
    "when S1 was sensed is unknown (no metadata says it, nor a date and time such as 20170216T051234 in its name)"
)
GIVE_S1_TIME = "give its STAC item, or tag the file (gdal_edit.py -mo ACQUISITION_START_TIME=2017-02-16T05:12:34Z FILE)"
#: Beyond this many days between S1 and S2 a run warns: one Sentinel-1 satellite passes over a place every 12 days
#: (two of them every 6), so an acquisition closer in time most likely exists.
GAP_WARNING_DAYS = 12.0
#: Metadata that says on which pass an S1 file was sensed: what GDAL's SAFE (Sentinel-1) driver reads from a
#: product (``ASCENDING``, ``DESCENDING``), which exports made with GDAL carry on, then a dsen2cr output's.
S1_ORBIT_TAGS = ("ORBIT_DIRECTION", "DSEN2CR_S1_ORBIT_DIRECTION")
ORBIT_DIRECTIONS = ("ascending", "descending")
#: Why S1's pass is unknown, and how to give it.
UNKNOWN_S1_ORBIT = "on which pass S1 was sensed is unknown (no STAC sat:orbit_state, no ORBIT_DIRECTION tag)"
GIVE_S1_ORBIT = "give its STAC item, or tag the file (gdal_edit.py -mo ORBIT_DIRECTION=ASCENDING FILE)"
#: VV and VH of one acquisition were sensed together; an S1 pair whose files say times further apart is two.
PAIR_SECONDS = 3600.0
#: S1 files sensed this close together are frames of one pass (consecutive slices of a datatake lie some 25 s apart;
#: the next pass over a place is hours away).
ONE_PASS_SECONDS = 600.0


@dataclass(frozen=True)
class S1Facts:
    """What an S1 input says of its acquisition: when it was sensed (ISO 8601 in UTC) and on which pass
    (``ascending``, ``descending``); None where nothing says."""

    sensing_time: str | None
    orbit: str | None


def s1_facts(s1: str) -> S1Facts:
    """When and on which pass the S1 that an ``--s1`` value names was sensed, each file's metadata (or the STAC item)
    read once. Time: an S1 STAC item's ``datetime`` (else ``start_datetime``); a file's metadata
    (:data:`S1_SENSING_TIME_TAGS`, the ``IMAGERY`` domain's ``ACQUISITIONDATETIME``), else the first
    ``YYYYMMDDTHHMMSS`` of its name (a product's, an RTC file's). Pass: the item's ``sat:orbit_state``, a file's
    :data:`S1_ORBIT_TAGS`. A ``VV,VH`` pair whose files say times more than an hour apart, or two passes, is refused
    (two acquisitions). Frames joined with ``+`` are one pass's (:func:`_pass_facts`)."""
    if len(frames := s1_frames(s1)) > 1:
        return _pass_facts(s1, frames)
    if is_stac(s1):
        properties = item_properties(s1)
        state = properties.get("sat:orbit_state")
        orbit = state.strip().lower() if isinstance(state, str) else None
        return S1Facts(item_time(properties), orbit if orbit in ORBIT_DIRECTIONS else None)
    facts = [_file_facts(part) for part in s1_parts(s1)]
    known = [fact.sensing_time for fact in facts if fact.sensing_time is not None]
    if len(known) == 2 and abs(days_between(known[0], known[1])) * 86400 > PAIR_SECONDS:
        raise DSen2CRError(
            f"{s1}: VV and VH were sensed at different times (VV {known[0]}, VH {known[1]}): an S1 pair is the two "
            "polarisations of one acquisition"
        )
    passes = {fact.orbit for fact in facts if fact.orbit is not None}
    if len(passes) > 1:
        raise DSen2CRError(
            f"{s1}: VV and VH say different passes ({', '.join(sorted(passes))}): one acquisition is one"
        )
    return S1Facts(known[0] if known else None, passes.pop() if passes else None)


def _pass_facts(s1: str, frames: list[str]) -> S1Facts:
    """What the frames of one pass (joined with ``+`` in ``s1``) say together: the pass's start (the earliest frame's
    time) and its direction (the one those that say it agree on). Refused: a frame whose time nothing says (that it
    belongs to the pass cannot be checked), frames sensed more than :data:`ONE_PASS_SECONDS` apart or said to be of
    two passes (they are not one pass's: the ground seen at two times)."""
    facts = [s1_facts(frame) for frame in frames]
    for frame, fact in zip(frames, facts, strict=True):
        if fact.sensing_time is None:
            raise DSen2CRError(
                f"{frame}: {UNKNOWN_S1_TIME}, so it cannot be checked to be a frame of the pass of {s1}; {GIVE_S1_TIME}"
            )
    stamps = [str(fact.sensing_time) for fact in facts]
    order = sorted(range(len(frames)), key=lambda i: days_between(stamps[0], stamps[i]))  # formats may differ
    (first, first_frame), (last, last_frame) = ((stamps[i], frames[i]) for i in (order[0], order[-1]))
    if days_between(first, last) * 86400 > ONE_PASS_SECONDS:
        raise DSen2CRError(
            f"{first_frame}, {last_frame}: frames joined with + are slices of one pass, sensed minutes apart; these "
            f"were sensed at {first} and {last}: give one pass's frames (the ground at one time)"
        )
    passes = {fact.orbit for fact in facts if fact.orbit is not None}
    if len(passes) > 1:
        raise DSen2CRError(f"{s1}: the frames joined with + say different passes ({', '.join(sorted(passes))})")
    return S1Facts(first, passes.pop() if passes else None)


def s1_sensing_time(s1: str) -> str | None:
    """When the S1 that an ``--s1`` value names was sensed (:func:`s1_facts`), or None when nothing says."""
    return s1_facts(s1).sensing_time


def s1_orbit_direction(s1: str) -> str | None:
    """On which pass the S1 that an ``--s1`` value names was sensed (:func:`s1_facts`), or None when nothing says."""
    return s1_facts(s1).orbit


def _file_facts(path: str) -> S1Facts:
    """When and on which pass an S1 file was sensed, by its metadata (its time else by its name)."""
    from dsen2cr.rasters import open_raster

    with open_raster(path, what="S1") as dataset:
        tagged = tagged_sensing_time(dataset, S1_SENSING_TIME_TAGS)
        tags = dataset.tags()
    said = [(tags.get(name) or "").strip().lower() for name in S1_ORBIT_TAGS]
    orbit = next((direction for direction in said if direction in ORBIT_DIRECTIONS), None)
    return S1Facts(tagged or sensing_time_of_name(Path(path).name), orbit)


def s1_gap_days(s2_time: str | None, s1_time: str | None) -> float | None:
    """The days from the S2 scene's sensing to S1's (negative: S1 sensed first), or None when either is unknown."""
    return None if s2_time is None or s1_time is None else days_between(s2_time, s1_time)


def gap_text(gap: float, of: str = "S2") -> str:
    """A gap of :func:`s1_gap_days` in words: ``2.2 days before S2``, ``0.5 days after S2`` (``of``: what S2)."""
    return f"{abs(gap):.1f} days {'before' if gap < 0 else 'after'} {of}"


def check_s1_gap(s2: str, s1: str, s2_time: str | None, s1_time: str | None, max_days: float) -> None:
    """Refuse S1 sensed more than ``max_days`` from the S2 scene (``--s1-max-days``), or a pair of which either
    time is unknown (the promise cannot be checked), saying how to give it."""
    option = f"--s1-max-days {max_days:g}"
    if s2_time is None:
        raise DSen2CRError(f"{s2}: {option}: {UNKNOWN_SENSING_TIME}; {GIVE_SENSING_TIME}")
    if s1_time is None:
        raise DSen2CRError(f"{s1}: {option}: {UNKNOWN_S1_TIME}; {GIVE_S1_TIME}")
    gap = days_between(s2_time, s1_time)
    if abs(gap) > max_days:
        raise DSen2CRError(
            f"{s1}: sensed {s1_time}, {gap_text(gap)} ({s2_time}), beyond {option}; give S1 sensed closer to the "
            "scene's date"
        )


def report_s1_gap(s1: str, s2_time: str | None, s1_time: str | None, *, warn: bool = True) -> None:
    """Say when S1 was sensed and how far from S2 (a debug line when unknown); warn (``warn``) beyond
    :data:`GAP_WARNING_DAYS`."""
    gap = s1_gap_days(s2_time, s1_time)
    if gap is None:
        log.debug("S1 %s: when it or the S2 scene was sensed is unknown; their distance in time is not known", s1)
        return
    if warn and abs(gap) > GAP_WARNING_DAYS:
        log.warning(
            "%s: S1 sensed %s, %s (%s): the network fills the clouds with the ground as S1 saw it then; Sentinel-1 "
            "passes every 6 to 12 days, so S1 closer in time most likely exists (--s1-max-days refuses pairs "
            "further apart)",
            s1,
            s1_time,
            gap_text(gap),
            s2_time,
        )
    else:
        log.info("S1: sensed %s, %s", s1_time, gap_text(gap))
