"""Each S2 scene paired with the S1 acquisition nearest to it in time among those that cover it (``dsen2cr pair``,
docs/design.md §4.5): S1's sensing time as :mod:`~dsen2cr.inputs.s1_time` reads it, and the share of the scene's
valid pixels where S1 holds data: a lattice of the scene's grid looked up in each S1's data mask, read once per S1,
decimated. A scene that lies across frames of one pass is paired with them joined (``a.tif+b.tif``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Final, Literal

import numpy as np
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import FRAME_JOIN, is_stac, resolve_s2, s1_frames, s1_parts
from dsen2cr.inputs.product import GIVE_SENSING_TIME, UNKNOWN_SENSING_TIME, days_between
from dsen2cr.inputs.readers import Grid, S2Source
from dsen2cr.inputs.s1 import open_s1
from dsen2cr.inputs.s1_time import (
    GIVE_S1_ORBIT,
    GIVE_S1_TIME,
    GIVE_S1_TRACK,
    ONE_PASS_SECONDS,
    ORBIT_DIRECTIONS,
    ORBITS_PER_CYCLE,
    UNKNOWN_S1_ORBIT,
    UNKNOWN_S1_TIME,
    UNKNOWN_S1_TRACK,
    gap_text,
    s1_facts,
)
from dsen2cr.inputs.stac import collection_items
from dsen2cr.rasters import decimated_shape, read_decimated

#: ``--relative-orbit same``: every scene's S1 of one relative orbit, the one that serves them all nearest in time.
SAME_TRACK: Final = "same"
#: The relative orbits S1 may be chosen from: any (empty), those given, or :data:`SAME_TRACK`.
Tracks = tuple[int, ...] | Literal["same"]

#: The lattice of a scene's grid on which S1's cover is sampled: at most this many points a side.
LATTICE_SIZE = 48
#: The share of a scene's valid pixels an S1 acquisition must hold data under to be paired with it, by default: the
#: run fills the rest with S1's scene mean (and warns), which tells the network nothing of the ground there.
DEFAULT_MIN_COVER = 0.95


@dataclass(frozen=True)
class S1Acquisition:
    """An S1 input as given (``text``: a file, a ``VV,VH`` pair, a STAC item), when it was sensed, on which pass
    (``ascending``, ``descending``) and relative orbit (``track``); None: nothing says."""

    text: str
    sensing_time: str
    orbit: str | None = None
    track: int | None = None


@dataclass(frozen=True)
class Pairing:
    """An S2 scene (as given) and the S1 paired with it: the days from the scene to S1 (negative: S1 first) and the
    share of the scene's valid pixels S1 covers; S1's pass and relative orbit (``track``), where known."""

    s2: str
    s1: str
    days: float
    cover: float
    orbit: str | None = None
    track: int | None = None


def s1_acquisition(text: str, orbit: str | None = None, tracks: Tracks = ()) -> S1Acquisition:
    """An S1 candidate: refused when nothing says when it was sensed (it could not be ranked), or, when only passes
    of ``orbit`` (or relative orbits among ``tracks``, or one relative orbit) are to be paired, on which pass
    (relative orbit)."""
    facts = s1_facts(text)
    if facts.sensing_time is None:
        raise DSen2CRError(f"{text}: {UNKNOWN_S1_TIME}, so it cannot be paired by date; {GIVE_S1_TIME}")
    if orbit is not None and facts.orbit is None:
        raise DSen2CRError(f"{text}: --orbit {orbit}: {UNKNOWN_S1_ORBIT}; {GIVE_S1_ORBIT}")
    if tracks and facts.track is None:
        raise DSen2CRError(f"{text}: --relative-orbit {track_list(tracks)}: {UNKNOWN_S1_TRACK}; {GIVE_S1_TRACK}")
    return S1Acquisition(text, facts.sensing_time, facts.orbit, facts.track)


def track_list(tracks: Tracks) -> str:
    """Relative orbits as ``--relative-orbit`` takes them: ``45 117``, or ``same``."""
    return tracks if isinstance(tracks, str) else " ".join(map(str, tracks))


def s1_items(s1_inputs: list[str]) -> list[str]:
    """The S1 inputs as the acquisitions they name: each item of an ItemCollection as ``DOCUMENT#ID``, frames joined
    with ``+`` (whose last may end in ``.json`` as a collection does) and other values as given."""
    return [
        text for given in s1_inputs for text in (collection_items(given) if len(s1_frames(given)) == 1 else [given])
    ]


def s1_candidates(s1_inputs: list[str], orbit: str | None = None, tracks: Tracks = ()) -> list[S1Acquisition]:
    """The S1 inputs as candidates (:func:`s1_acquisition`; each item of an ItemCollection one, single-polarisation
    files paired by name, :func:`polarisation_pairs`), those of ``orbit``'s passes only when it is given, and of the
    relative orbits ``tracks`` only when any are (:data:`SAME_TRACK`: all, each of a known one); refused when that
    leaves none."""
    if orbit is not None and orbit not in ORBIT_DIRECTIONS:
        raise DSen2CRError(f"--orbit: one of {', '.join(ORBIT_DIRECTIONS)}, got {orbit!r}")
    if isinstance(tracks, str) and tracks != SAME_TRACK:
        raise DSen2CRError(f"--relative-orbit: numbers 1 to {ORBITS_PER_CYCLE}, or {SAME_TRACK}; got {tracks!r}")
    for track in () if isinstance(tracks, str) else tracks:
        if not 1 <= track <= ORBITS_PER_CYCLE:
            raise DSen2CRError(f"--relative-orbit: Sentinel-1's are 1 to {ORBITS_PER_CYCLE}, got {track}")
    texts = polarisation_pairs(s1_items(s1_inputs))
    acquisitions = [s1_acquisition(text, orbit, tracks) for text in texts]
    kept = [s1 for s1 in acquisitions if orbit is None or s1.orbit == orbit]
    if not kept:
        raise DSen2CRError(f"--orbit {orbit}: none of the {len(acquisitions)} S1 given was sensed on that pass")
    on_track = [s1 for s1 in kept if isinstance(tracks, str) or not tracks or s1.track in tracks]
    if not on_track:
        said = sorted({s1.track for s1 in kept if s1.track is not None})
        raise DSen2CRError(
            f"--relative-orbit {track_list(tracks)}: none of the {len(kept)} S1 given was sensed on it (they lie on "
            f"relative orbit{'s' if len(said) > 1 else ''} {', '.join(map(str, said))})"
        )
    return on_track


#: A polarisation named in a file name: VV or VH apart from other letters (``…_VV.tif``, ``s1-vh.tif``).
_POLARISATION_IN_NAME = re.compile(r"(?<![A-Z])V[VH](?![A-Z])")


def polarisation_pairs(texts: list[str]) -> list[str]:
    """The S1 inputs with each file whose name says VV (one polarisation a file, as ASF HyP3's RTC products
    ``…_VV.tif`` and ``…_VH.tif``) given with the file of its folder whose name says VH in its place, as one
    ``VV,VH`` pair where the VV file stood; the rest as given (a file without its partner is refused as it is read:
    one band)."""
    keys: dict[str, tuple[str, str]] = {}
    for text in texts:
        name = Path(text).name
        found = list(_POLARISATION_IN_NAME.finditer(name.upper()))
        if len(found) == 1 and not is_stac(text) and len(s1_parts(text)) == 1:
            start, end = found[0].span()
            keys[text] = (str(Path(text).parent / f"{name[:start]}{{}}{name[end:]}"), found[0].group())
    partner = {key: text for text, (key, said) in keys.items() if said == "VH"}
    paired = {text: partner[key] for text, (key, said) in keys.items() if said == "VV" and key in partner}
    taken = set(paired.values())
    return [f"{text},{paired[text]}" if text in paired else text for text in texts if text not in taken]


def scene_lattice(s2: S2Source) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates (x, y in the scene's CRS) of the centres of a lattice of at most :data:`LATTICE_SIZE` points a
    side over the scene's valid pixels (read decimated: a product's overviews)."""
    return lattice_points(s2.grid, s2.valid(s2.read_decimated(LATTICE_SIZE)))


def lattice_points(grid: Grid, valid: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates (x, y in ``grid``'s CRS) of the centres of the True cells of ``valid`` (a decimated raster of
    ``grid``'s whole extent), of every ``step``-th row and column."""
    rows, cols = np.nonzero(valid[::step, ::step])
    row_step, col_step = grid.height / valid.shape[0], grid.width / valid.shape[1]
    xs, ys = grid.transform * ((cols * step + 0.5) * col_step, (rows * step + 0.5) * row_step)
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


#: S1's data mask is read once per candidate, decimated to at most this many pixels a side (GDAL's nearest pixel
#: of each cell; a file's overviews where it has them): 11 px of a full tile at 10 m, far below a lattice step.
FOOTPRINT_SIZE = 1024


@dataclass(frozen=True)
class S1Footprint:
    """Where an S1 input holds data in both bands (not its nodata value, nor 0 where it declares none, nor NaN), on
    a decimated grid of it: ``valid`` (rows, columns), its CRS and the transform from map coordinates to that
    grid's pixels."""

    valid: np.ndarray
    crs: object
    to_pixels: Affine

    @classmethod
    def read(cls, text: str) -> S1Footprint:
        """The footprint of the S1 input ``text`` (a file, a ``VV,VH`` pair, a STAC item), read once, decimated."""
        with open_s1(text) as dataset:
            if dataset.crs is None:
                raise DSen2CRError(f"{text}: S1 has no coordinate reference system")
            shape = decimated_shape(dataset.height, dataset.width, FOOTPRINT_SIZE)
            values = read_decimated(dataset, shape)
            nodata = 0.0 if dataset.nodata is None else dataset.nodata
            pixels = Affine.scale(shape[1] / dataset.width, shape[0] / dataset.height) * ~dataset.transform
            crs = dataset.crs
        valid = np.all(np.isfinite(values) & (values != nodata), axis=0)
        return cls(valid, crs, pixels)

    def held(self, crs: object, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Whether S1 holds data at each of the points (``xs``, ``ys`` in ``crs``): False outside it."""
        if len(xs) == 0:
            return np.zeros(0, bool)
        s1_xs, s1_ys = transform_points(crs, self.crs, xs.tolist(), ys.tolist())
        x, y, a = np.asarray(s1_xs), np.asarray(s1_ys), self.to_pixels
        cols, rows = a.a * x + a.b * y + a.c, a.d * x + a.e * y + a.f
        height, width = self.valid.shape
        inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
        held = np.zeros(len(xs), bool)
        held[inside] = self.valid[rows[inside].astype(int), cols[inside].astype(int)]
        return held


def s1_held(footprints: dict[str, S1Footprint], text: str, crs: object, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Whether the S1 input ``text`` (frames joined with ``+``: any of them) holds data at each of the points (``xs``,
    ``ys`` in ``crs``); each frame's footprint read once into ``footprints``, for every scene."""
    held = np.zeros(len(xs), bool)
    for frame in s1_frames(text):
        if frame not in footprints:
            footprints[frame] = S1Footprint.read(frame)
        held |= footprints[frame].held(crs, xs, ys)
    return held


def joined_passes(found: list[Pairing], held: dict[str, np.ndarray]) -> list[Pairing]:
    """``found`` (one scene's candidates) with the frames of each pass (sensed within :data:`ONE_PASS_SECONDS` of its
    first, said to be of one pass where their files say it, as :class:`~dsen2cr.inputs.s1.S1Source` checks them)
    that hold data over the scene replaced by one candidate: the frame that covers most, joined with ``+`` to each
    frame that adds cover (``held``: each candidate's points), most first; its days the pass's start (its first
    frame's, as ``S1Source`` dates frames), its pass the one its frames say, its relative orbit the earliest said (as
    ``S1Source`` takes it)."""
    passes: list[list[Pairing]] = []
    for pairing in sorted((p for p in found if p.cover > 0), key=lambda p: p.days):
        group = passes[-1] if passes else []
        said = {p.orbit for p in [*group, pairing]} - {None}
        if group and (pairing.days - group[0].days) * 86400 <= ONE_PASS_SECONDS and len(said) <= 1:
            group.append(pairing)
        else:
            passes.append([pairing])
    joined = [p for p in found if p.cover == 0]
    for frames in passes:
        chosen, union = [], np.zeros_like(held[frames[0].s1])
        for frame in sorted(frames, key=lambda p: -p.cover):
            if (held[frame.s1] & ~union).any():
                chosen.append(frame)
                union |= held[frame.s1]
        text = FRAME_JOIN.join(frame.s1 for frame in chosen)
        orbit = next((frame.orbit for frame in chosen if frame.orbit is not None), None)
        in_time = sorted(chosen, key=lambda frame: frame.days)
        track = next((frame.track for frame in in_time if frame.track is not None), None)
        joined.append(Pairing(chosen[0].s2, text, in_time[0].days, float(union.mean()), orbit, track))
    return joined


def pair_scenes(
    s2_inputs: list[str],
    s1_inputs: list[str],
    *,
    s2_offset: int | None = None,
    min_cover: float = DEFAULT_MIN_COVER,
    max_days: float | None = None,
    orbit: str | None = None,
    tracks: Tracks = (),
) -> list[Pairing]:
    """Each S2 scene with the S1 acquisition nearest to it in time among those that hold data under at least
    ``min_cover`` of its valid pixels (and lie within ``max_days`` of it, and were sensed on an ``orbit`` pass, and
    on one of the relative orbits ``tracks``, when given; :data:`SAME_TRACK`: on the one relative orbit that serves
    every scene, :func:`one_track`); of two as near, the one that covers more. Frames of one pass count as one
    candidate (:func:`joined_passes`). An S2 scene whose sensing time nothing says, or that no S1 can be paired with,
    is refused, naming the nearest S1 that covers any of it, as are a ``min_cover`` that is no share and a negative
    ``max_days``."""
    check_pairing_limits(min_cover, max_days)
    acquisitions = s1_candidates(s1_inputs, orbit, tracks)
    footprints: dict[str, S1Footprint] = {}
    pairings, scenes = [], []  # each scene's pairing, or (same track) each scene's candidates to choose from
    for s2_text in (text for given in s2_inputs for text in collection_items(given)):
        product = resolve_s2(s2_text, offset=s2_offset)
        if product.sensing_time is None:
            raise DSen2CRError(
                f"{s2_text}: {UNKNOWN_SENSING_TIME}, so no S1 can be paired with it by date; {GIVE_SENSING_TIME}"
            )
        sensed = product.sensing_time
        s2 = S2Source(product)
        try:
            xs, ys = scene_lattice(s2)
            crs = s2.grid.crs
        finally:
            s2.close()
        if len(xs) == 0:
            raise DSen2CRError(f"{s2_text}: S2 has no valid pixels (all nodata or NaN): nothing to pair")
        found = scene_candidates(s2_text, sensed, (crs, xs, ys), acquisitions, footprints)
        if tracks == SAME_TRACK:
            scenes.append((s2_text, found))
        else:  # refused here, before the next scene is read
            pairings.append(nearest_pairing(s2_text, found, min_cover, max_days))
    return one_track(scenes, min_cover, max_days) if tracks == SAME_TRACK else pairings


def one_track(scenes: list[tuple[str, list[Pairing]]], min_cover: float, max_days: float | None) -> list[Pairing]:
    """Each scene (its candidates) paired with S1 of one relative orbit (``--relative-orbit same``: a series that
    sees the ground from one angle, date after date): of the relative orbits whose S1 serve every scene
    (:func:`nearest_pairing` within it), the one nearest in time on average (then the one that covers more, then the
    lower number). Refused where none serves them all, saying how many each serves."""
    served: dict[int, list[Pairing]] = {}
    for track in sorted({p.track for _, found in scenes for p in found if p.track is not None}):
        served[track] = []
        for s2, found in scenes:
            try:
                served[track].append(nearest_pairing(s2, [p for p in found if p.track == track], min_cover, max_days))
            except DSen2CRError:
                continue
    complete = [track for track, chosen in served.items() if len(chosen) == len(scenes)]
    if not complete:
        counts = sorted(served.items(), key=lambda item: (-len(item[1]), item[0]))
        within = f" within {max_days:g} days" if max_days is not None else ""
        raise DSen2CRError(
            f"--relative-orbit {SAME_TRACK}: no relative orbit has S1 that covers {min_cover:.0%} of every one of the "
            f"{len(scenes)} scenes{within} ("
            + ", ".join(f"{track}: {len(chosen)}" for track, chosen in counts)
            + "): give more S1 of one, or pair the scenes apart"
        )
    return min(
        (served[track] for track in complete),
        key=lambda chosen: (fmean(abs(p.days) for p in chosen), -fmean(p.cover for p in chosen), chosen[0].track),
    )


def scene_candidates(
    s2: str,
    sensed: str,
    points: tuple[object, np.ndarray, np.ndarray],
    acquisitions: list[S1Acquisition],
    footprints: dict[str, S1Footprint],
) -> list[Pairing]:
    """Each acquisition as a pairing of the scene ``s2`` (sensed at ``sensed``): its days from the scene and the share
    of the scene's ``points`` (CRS, x, y) where it holds data (``footprints`` read once for every scene), the frames
    of one pass as one candidate (:func:`joined_passes`)."""
    crs, xs, ys = points
    found, held = [], {}
    for s1 in acquisitions:
        held[s1.text] = s1_held(footprints, s1.text, crs, xs, ys)
        cover = float(held[s1.text].mean())
        found.append(Pairing(s2, s1.text, days_between(sensed, s1.sensing_time), cover, s1.orbit, s1.track))
    return joined_passes(found, held)


def check_pairing_limits(min_cover: float, max_days: float | None) -> None:
    """Refuse a ``min_cover`` that is no share (``--min-cover``) and a negative ``max_days`` (``--s1-max-days``)."""
    if not 0 < min_cover <= 1:
        raise DSen2CRError(f"--min-cover: must be a share in (0, 1], got {min_cover:g}")
    if max_days is not None and max_days < 0:
        raise DSen2CRError(f"--s1-max-days: must be 0 or more days, got {max_days:g}")


def nearest_pairing(s2: str, found: list[Pairing], min_cover: float, max_days: float | None, of: str = "S2") -> Pairing:
    """The pairing of ``found`` nearest in time among those that cover ``min_cover`` within ``max_days``; refused
    when there is none, naming the nearest S1 that covers any of the scene (its days from ``of``: the S2 they count
    from)."""
    eligible = [p for p in found if p.cover >= min_cover and (max_days is None or abs(p.days) <= max_days)]
    if eligible:
        return min(eligible, key=lambda p: (abs(p.days), -p.cover))
    within = f" within {max_days:g} days" if max_days is not None else ""
    overlapping = sorted((p for p in found if p.cover > 0), key=lambda p: abs(p.days))
    if not overlapping:
        raise DSen2CRError(f"{s2}: no S1 given holds data over it")
    best = overlapping[0]
    raise DSen2CRError(
        f"{s2}: no S1 given covers {min_cover:.0%} of it{within}; the nearest in time that covers any is {best.s1} "
        f"({best.cover:.0%} of it, {gap_text(best.days, of)}): give more S1, or a lower --min-cover"
        + (" or a larger --s1-max-days" if max_days is not None else "")
    )
