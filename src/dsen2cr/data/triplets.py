"""Training triplets chosen from a collection of scenes (``dsen2cr data triplets``, docs/design.md §4.5): each cloudy
S2 scene (the input) with a clear acquisition of its grid sensed near it (the target) and the S1 nearest in time to
the target (or to the input) that covers them, written as a ``data patches --manifest``. Each scene is read once,
decimated: its cloud cover by the paper's detector and where it holds data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.cloud_detection import cloud_score
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import resolve_s2
from dsen2cr.inputs.pairing import (
    LATTICE_SIZE,
    Pairing,
    S1Acquisition,
    S1Footprint,
    check_pairing_limits,
    lattice_points,
    nearest_pairing,
    s1_candidates,
    scene_candidates,
)
from dsen2cr.inputs.product import GIVE_SENSING_TIME, UNKNOWN_SENSING_TIME, days_between
from dsen2cr.inputs.readers import Grid, S2Source
from dsen2cr.inputs.stac import collection_items

#: Each scene is read at most this many pixels a side (a product's overviews) for its cloud cover and its data.
SCENE_READ_SIZE = 512
#: A scene is a target when at most this share of its valid pixels is cloud, by default.
DEFAULT_MAX_TARGET_CLOUD = 0.05
#: A scene is an input when at least this share of its valid pixels is cloud, by default: a model learns little
#: from an input that is its target.
DEFAULT_MIN_INPUT_CLOUD = 0.1
#: The most days between an input and its target, by default: the ground changes with the season, and a model
#: trained on a target of other ground learns the change as if the clouds hid it.
DEFAULT_MAX_DAYS = 30.0
#: Which S2 the S1 of a triplet is chosen near in time: the target (S1 then shows the ground the target shows, as at
#: inference S1 sensed with the input shows the ground under its clouds: the model learns to take the ground from S1)
#: or the input.
S1_NEAR = ("target", "input")


@dataclass(frozen=True)
class S2Scene:
    """An S2 scene as given, read once decimated: when it was sensed, its grid and level, the share of its valid
    pixels the paper's detector calls cloud, and where it holds data (``valid``, the decimated raster)."""

    text: str
    sensing_time: str
    grid: Grid
    level: str
    cloud: float
    valid: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def read(cls, text: str, offset: int | None = None) -> S2Scene:
        """Read the scene ``text`` (any ``--s2`` input) decimated; refused when nothing says when it was sensed."""
        product = resolve_s2(text, offset=offset)
        if product.sensing_time is None:
            raise DSen2CRError(
                f"{text}: {UNKNOWN_SENSING_TIME}, so it cannot be paired with a scene by date; {GIVE_SENSING_TIME}"
            )
        s2 = S2Source(product)
        try:
            dn = s2.read_decimated_scene(SCENE_READ_SIZE)
            valid = s2.valid(dn)
            grid, level = s2.grid, s2.level
        finally:
            s2.close()
        cloud = float((cloud_score(dn) >= DEFAULT_CLOUD_THRESHOLD)[valid].mean()) if valid.any() else math.nan
        return cls(text, product.sensing_time, grid, level, cloud, valid)


@dataclass(frozen=True)
class Triplet:
    """A ROI's scenes: the input (``s2_cloudy``), its target (``s2``) and ``s1``; the days from the input to the
    target and from the S2 that S1 was chosen near to S1 (negative: before it); ``cover``, the share of the input's
    valid pixels where all three hold data; S1's pass and relative orbit, where known."""

    roi: int
    s2_cloudy: S2Scene
    s2: S2Scene
    s1: str
    target_days: float
    s1_days: float
    cover: float
    s1_orbit: str | None = None
    s1_track: int | None = None


@dataclass(frozen=True)
class TripletChoice:
    """What :func:`choose_triplets` found: the triplets, the inputs left out (their reasons, each naming the scene),
    and the scenes neither cloudy enough to be an input nor clear enough to be a target."""

    triplets: list[Triplet]
    left_out: list[str]
    neither: list[S2Scene]


@dataclass(frozen=True)
class TripletRules:
    """How triplets are chosen: a scene at least ``min_input_cloud`` cloud is an input, at most ``max_target_cloud`` a
    target; a target within ``max_days`` of its input, holding data under ``min_cover`` of the input's valid pixels;
    S1 near the target (``s1_near="input"``: the input), holding data under ``min_cover`` of where both S2 do, within
    ``s1_max_days``, of ``orbit``'s passes and of the relative orbits ``tracks`` when given. Refused, naming the
    option, where they choose nothing sensible."""

    max_target_cloud: float = DEFAULT_MAX_TARGET_CLOUD
    min_input_cloud: float = DEFAULT_MIN_INPUT_CLOUD
    max_days: float = DEFAULT_MAX_DAYS
    min_cover: float = 0.95
    s1_near: str = "target"
    s1_max_days: float | None = None
    orbit: str | None = None
    tracks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for option, share in (("--clear", self.max_target_cloud), ("--cloudy", self.min_input_cloud)):
            if not 0 <= share <= 1:
                raise DSen2CRError(f"{option}: must be a share in [0, 1], got {share:g}")
        if self.min_input_cloud <= self.max_target_cloud:
            raise DSen2CRError(
                f"--cloudy {self.min_input_cloud:g} must exceed --clear {self.max_target_cloud:g}: a scene would be "
                "both an input and a target"
            )
        check_pairing_limits(self.min_cover, self.s1_max_days)
        if self.max_days < 0:
            raise DSen2CRError(f"--max-days: must be 0 or more days, got {self.max_days:g}")
        if self.s1_near not in S1_NEAR:
            raise DSen2CRError(f"--s1-near: one of {', '.join(S1_NEAR)}, got {self.s1_near!r}")


def choose_triplets(
    s2_inputs: list[str],
    s1_inputs: list[str],
    rules: TripletRules | None = None,
    *,
    s2_offset: int | None = None,
    first_roi: int = 1,
) -> TripletChoice:
    """Each scene of ``s2_inputs`` cloudy enough to be an input (``rules``, default :class:`TripletRules`), with the
    target of its grid and level nearest to it in time that covers it, and the S1 nearest in time to the target (or
    to the input) that covers where both do; ROIs numbered from ``first_roi`` in the inputs' order. An input without
    such a target or S1 is left out with its reason; none left at all is refused."""
    rules = rules or TripletRules()
    if first_roi < 1:
        raise DSen2CRError(f"--first-roi: must be 1 or more, got {first_roi}")
    scenes = [S2Scene.read(text, s2_offset) for given in s2_inputs for text in collection_items(given)]
    _check_distinct(scenes)
    acquisitions = s1_candidates(s1_inputs, rules.orbit, rules.tracks)
    footprints: dict[str, S1Footprint] = {}
    targets = [scene for scene in scenes if scene.cloud <= rules.max_target_cloud]
    triplets: list[Triplet] = []
    left_out: list[str] = []
    for scene in scenes:
        if math.isnan(scene.cloud):
            left_out.append(f"{scene.text}: S2 has no valid pixels (all nodata or NaN)")
            continue
        if scene.cloud < rules.min_input_cloud:
            continue
        try:
            target, days, shared = _target(scene, targets, rules)
            s1_choice = _nearest_s1(scene, target, rules, acquisitions, footprints)
        except DSen2CRError as reason:
            left_out.append(str(reason))
            continue
        cover = shared * s1_choice.cover
        roi = first_roi + len(triplets)
        facts = (s1_choice.orbit, s1_choice.track)
        triplets.append(Triplet(roi, scene, target, s1_choice.s1, days, s1_choice.days, cover, *facts))
    neither = [scene for scene in scenes if rules.max_target_cloud < scene.cloud < rules.min_input_cloud]
    if not triplets:
        reasons = "; ".join(left_out) or "no scene is cloudy enough to be an input"
        raise DSen2CRError(f"--s2: no triplet to write of the {len(scenes)} scenes given: {reasons}")
    return TripletChoice(triplets, left_out, neither)


def _check_distinct(scenes: list[S2Scene]) -> None:
    """Refuse one product given twice (one file twice, or a zip and its unzipped folder: one grid, one sensing time,
    one level): its ROIs would repeat one another's patches, across the splits too. The Level-1C and Level-2A
    products of one acquisition are two (each is paired within its level)."""
    for index, scene in enumerate(scenes):
        for other in scenes[:index]:
            same = (other.grid, other.sensing_time, other.level) == (scene.grid, scene.sensing_time, scene.level)
            if same:
                raise DSen2CRError(
                    f"{scene.text}: the acquisition {other.text} is too (one grid, sensed at {scene.sensing_time}, "
                    f"Level-{scene.level[1:]}): give each scene once"
                )


def _target(scene: S2Scene, targets: list[S2Scene], rules: TripletRules) -> tuple[S2Scene, float, float]:
    """The target of the input ``scene``, the days from it to the target and the share of its valid pixels where the
    target holds data: the clear scene of its grid and level nearest in time within ``rules.max_days`` that holds
    data under ``rules.min_cover`` of its valid pixels (of two as near, the one that covers more); refused naming
    what came nearest."""
    max_target_cloud, max_days, min_cover = rules.max_target_cloud, rules.max_days, rules.min_cover
    own = [t for t in targets if t.grid == scene.grid and t.level == scene.level and t.text != scene.text]
    clear = f"no clear scene (--clear: at most {max_target_cloud:.0%} cloud) of its grid and level"
    if not own:
        raise DSen2CRError(f"{scene.text}: {clear} was given")
    days = {t.text: days_between(scene.sensing_time, t.sensing_time) for t in own}
    cover = {t.text: float((scene.valid & t.valid).sum() / scene.valid.sum()) for t in own}
    within = [t for t in own if abs(days[t.text]) <= max_days]
    eligible = [t for t in within if cover[t.text] >= min_cover]
    if eligible:
        target = min(eligible, key=lambda t: (abs(days[t.text]), -cover[t.text]))
        return target, days[target.text], cover[target.text]
    if not within:
        nearest = min(own, key=lambda t: abs(days[t.text]))
        raise DSen2CRError(
            f"{scene.text}: {clear} within {max_days:g} days; the nearest, {nearest.text}, lies "
            f"{abs(days[nearest.text]):.1f} days {'after' if days[nearest.text] > 0 else 'before'} it (--max-days)"
        )
    best = max(within, key=lambda t: cover[t.text])
    raise DSen2CRError(
        f"{scene.text}: {clear} within {max_days:g} days holds data under {min_cover:.0%} of it; {best.text} "
        f"covers {cover[best.text]:.0%} (--min-cover)"
    )


def _nearest_s1(
    scene: S2Scene,
    target: S2Scene,
    rules: TripletRules,
    acquisitions: list[S1Acquisition],
    footprints: dict[str, S1Footprint],
) -> Pairing:
    """The S1 of the input ``scene`` and its ``target``: the acquisition nearest in time to the one ``rules.s1_near``
    names that holds data under ``rules.min_cover`` of the pixels where both S2 do (a lattice of them;
    ``footprints`` read once for every scene; frames of one pass one candidate, joined); refused naming the nearest
    that covers any."""
    near = target if rules.s1_near == "target" else scene
    both = scene.valid & target.valid
    xs, ys = lattice_points(scene.grid, both, max(1, math.ceil(max(both.shape) / LATTICE_SIZE)))
    found = scene_candidates(near.text, near.sensing_time, (scene.grid.crs, xs, ys), acquisitions, footprints)
    named = scene.text if near is scene else f"{scene.text} (S1 near its target {target.text})"
    return nearest_pairing(named, found, rules.min_cover, rules.s1_max_days, f"the {rules.s1_near}")


def grid_groups(triplets: list[Triplet]) -> list[list[int]]:
    """The ROIs of ``triplets`` grouped by their grid (one ground: one split), in the order of their first ROI."""
    groups: list[tuple[Grid, list[int]]] = []
    for triplet in triplets:
        group = next((rois for grid, rois in groups if grid == triplet.s2_cloudy.grid), None)
        if group is None:
            groups.append((triplet.s2_cloudy.grid, [triplet.roi]))
        else:
            group.append(triplet.roi)
    return [rois for _, rois in groups]
