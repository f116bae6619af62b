"""When S1 was sensed (and on which pass), and how far in time it lies from the S2 scene it stands in for under the
clouds (docs/design.md §4.5). DSen2-CR takes S1 of about the scene's date: what the network puts under a cloud follows
the ground as S1 saw it, so the further apart the two, the more that ground may have changed (a harvest, a flood,
snow)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import is_stac, s1_frames, s1_parts
from dsen2cr.inputs.geotiff import tagged_sensing_time
from dsen2cr.inputs.product import GIVE_SENSING_TIME, UNKNOWN_SENSING_TIME, days_between, sensing_time_of_name
from dsen2cr.inputs.s1_products import refuse_s1_product
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
#: Metadata that says an S1 file's relative orbit (its track, ``sat:relative_orbit``): a dsen2cr output's. Else
#: :data:`S1_MISSION_TAG` and :data:`S1_ABSOLUTE_ORBIT_TAG`, what GDAL's SAFE (Sentinel-1) driver reads from a
#: product, which exports made with GDAL carry on.
S1_TRACK_TAG = "DSEN2CR_S1_RELATIVE_ORBIT"
S1_MISSION_TAG = "MISSION_ID"
S1_ABSOLUTE_ORBIT_TAG = "ORBIT_NUMBER"
#: A Sentinel-1 satellite flies 175 orbits in its 12-day repeat cycle: relative orbits (tracks) 1 to 175.
ORBITS_PER_CYCLE = 175
#: The absolute orbit number at which each satellite's relative orbit 1 begins, modulo 175: relative orbit =
#: (absolute − offset) mod 175 + 1 (S1A and S1B: checked against ESA's manifests; S1C: the offset MintPy uses, which
#: its 180° phasing to S1A confirms). Other satellites' files need their relative orbit said (a STAC item, a tag).
TRACK_OFFSETS = {"S1A": 73, "S1B": 27, "S1C": 172}
#: A Sentinel-1 product's name: satellite, mode and type, start and stop, absolute orbit, datatake, checksum
#: (``S1A_IW_GRDH_1SDV_20170216T051234_20170216T051259_015335_0191A9_5C2F``).
_PRODUCT_NAME = re.compile(r"(?<![A-Z0-9])(S1[A-Z])_[A-Z0-9_]+?_\d{8}T\d{6}_\d{8}T\d{6}_(\d{6})_[0-9A-F]{6}")
#: An OPERA RTC-S1 burst's name (NASA JPL's, ASF): its burst ID begins with its track (relative orbit)
#: (``OPERA_L2_RTC-S1_T087-185679-IW2_20200101T161622Z_…_VV.tif``).
_OPERA_BURST = re.compile(r"OPERA_L2_RTC-S1_T(\d{3})-\d{6}-IW[1-3]_")
#: Why S1's relative orbit is unknown, and how to give it.
UNKNOWN_S1_TRACK = (
    "S1's relative orbit is unknown (no STAC sat:relative_orbit, no MISSION_ID and ORBIT_NUMBER tags, no Sentinel-1 "
    "product's or OPERA burst's name)"
)
GIVE_S1_TRACK = f"give its STAC item, or tag the file (gdal_edit.py -mo {S1_TRACK_TAG}=45 FILE)"
#: VV and VH of one acquisition were sensed together; an S1 pair whose files say times further apart is two.
PAIR_SECONDS = 3600.0
#: S1 files sensed this close together are frames of one pass (consecutive slices of a datatake lie some 25 s apart;
#: the next pass over a place is hours away).
ONE_PASS_SECONDS = 600.0


@dataclass(frozen=True)
class S1Facts:
    """What an S1 input says of its acquisition: when it was sensed (ISO 8601 in UTC), on which pass (``ascending``,
    ``descending``) and its relative orbit (``track``, 1 to 175: S1 of one track sees a place from one angle); None
    where nothing says."""

    sensing_time: str | None
    orbit: str | None
    track: int | None = None


def relative_orbit(mission: str, absolute: int) -> int | None:
    """The relative orbit (1 to 175) of ``absolute`` orbit of satellite ``mission`` (``S1A``; any case), by
    :data:`TRACK_OFFSETS`; None for a satellite it does not know."""
    offset = TRACK_OFFSETS.get(mission.strip().upper())
    return None if offset is None else (absolute - offset) % ORBITS_PER_CYCLE + 1


def track_of_name(name: str) -> int | None:
    """The relative orbit a Sentinel-1 product's name says (its satellite and absolute orbit), or an OPERA RTC-S1
    burst's (its track); None where it says none."""
    if (burst := _OPERA_BURST.search(name.upper())) is not None:
        return _track_number(burst.group(1))
    found = _PRODUCT_NAME.search(name.upper())
    return None if found is None else relative_orbit(found.group(1), int(found.group(2)))


def _track_number(value: object) -> int | None:
    """``value`` as a relative orbit: a whole number 1 to 175 (an int, or its text); None otherwise."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    return int(text) if text.isdigit() and 1 <= int(text) <= ORBITS_PER_CYCLE else None


def _item_track(properties: dict) -> int | None:
    """An S1 item's relative orbit: ``sat:relative_orbit``, else ``sat:absolute_orbit`` of its ``platform``."""
    said = _track_number(properties.get("sat:relative_orbit"))
    absolute, platform = properties.get("sat:absolute_orbit"), properties.get("platform")
    if said is None and isinstance(absolute, int) and isinstance(platform, str):
        return relative_orbit(platform.lower().replace("sentinel-", "S"), absolute)
    return said


def _tagged_track(tags: dict[str, str]) -> int | None:
    """A file's relative orbit by its tags (:data:`S1_TRACK_TAG`, else MISSION_ID and ORBIT_NUMBER), or None."""
    said = _track_number(tags.get(S1_TRACK_TAG))
    absolute = (tags.get(S1_ABSOLUTE_ORBIT_TAG) or "").strip()
    if said is None and absolute.isdigit() and tags.get(S1_MISSION_TAG):
        return relative_orbit(tags[S1_MISSION_TAG], int(absolute))
    return said


def s1_facts(s1: str) -> S1Facts:
    """When and on which pass the S1 that an ``--s1`` value names was sensed, each file's metadata (or the STAC item)
    read once. Time: an S1 STAC item's ``datetime`` (else ``start_datetime``); a file's metadata
    (:data:`S1_SENSING_TIME_TAGS`, the ``IMAGERY`` domain's ``ACQUISITIONDATETIME``), else the first
    ``YYYYMMDDTHHMMSS`` of its name (a product's, an RTC file's). Pass: the item's ``sat:orbit_state``, a file's
    :data:`S1_ORBIT_TAGS`. Relative orbit: the item's ``sat:relative_orbit`` (else its ``sat:absolute_orbit`` and
    ``platform``), a file's :data:`S1_TRACK_TAG` (else GDAL's MISSION_ID and ORBIT_NUMBER), else a product name's
    satellite and absolute orbit (:func:`relative_orbit`). A ``VV,VH`` pair whose files say times more than an hour
    apart, or two passes, is refused (two acquisitions). Frames joined with ``+`` are one pass's
    (:func:`_pass_facts`)."""
    if len(frames := s1_frames(s1)) > 1:
        return _pass_facts(s1, frames)
    if is_stac(s1):
        properties = item_properties(s1)
        state = properties.get("sat:orbit_state")
        orbit = state.strip().lower() if isinstance(state, str) else None
        return S1Facts(item_time(properties), orbit if orbit in ORBIT_DIRECTIONS else None, _item_track(properties))
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
    track = next((fact.track for fact in facts if fact.track is not None), None)
    return S1Facts(known[0] if known else None, passes.pop() if passes else None, track)


def _pass_facts(s1: str, frames: list[str]) -> S1Facts:
    """What the frames of one pass (joined with ``+`` in ``s1``) say together: the pass's start (the earliest frame's
    time) and its direction (the one those that say it agree on). Refused: a frame whose time nothing says (that it
    belongs to the pass cannot be checked), frames sensed more than :data:`ONE_PASS_SECONDS` apart or said to be of
    two passes (they are not one pass's: the ground seen at two times). Their relative orbit is the pass's start's,
    else the first said (a datatake's slices after it crosses the equator northwards count the next orbit)."""
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
    tracks = [facts[i].track for i in order if facts[i].track is not None]
    return S1Facts(first, passes.pop() if passes else None, tracks[0] if tracks else None)


def s1_sensing_time(s1: str) -> str | None:
    """When the S1 that an ``--s1`` value names was sensed (:func:`s1_facts`), or None when nothing says."""
    return s1_facts(s1).sensing_time


def s1_orbit_direction(s1: str) -> str | None:
    """On which pass the S1 that an ``--s1`` value names was sensed (:func:`s1_facts`), or None when nothing says."""
    return s1_facts(s1).orbit


def _file_facts(path: str) -> S1Facts:
    """When, on which pass and on which relative orbit an S1 file was sensed, by its metadata (its time and its
    relative orbit else by its name)."""
    from dsen2cr.rasters import open_raster

    refuse_s1_product(path)
    with open_raster(path, what="S1") as dataset:
        tagged = tagged_sensing_time(dataset, S1_SENSING_TIME_TAGS)
        tags = dataset.tags()
    said = [(tags.get(name) or "").strip().lower() for name in S1_ORBIT_TAGS]
    orbit = next((direction for direction in said if direction in ORBIT_DIRECTIONS), None)
    name = Path(path).name
    return S1Facts(tagged or sensing_time_of_name(name), orbit, _tagged_track(tags) or track_of_name(name))


def pass_text(orbit: str | None, track: int | None) -> str:
    """S1's pass and relative orbit as a line of what was chosen or what made an output ends with them:
    ``, descending pass, relative orbit 22``; nothing of what is unknown (None)."""
    return (f", {orbit} pass" if orbit else "") + (f", relative orbit {track}" if track is not None else "")


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
