"""What a ``remove-clouds`` run is asked to do, and what it will do (docs/design.md §4.3).

- :class:`SceneJob`: one scene's inputs and outputs.
- :class:`SceneSettings`: the run's settings as the user gave them (``auto`` where the tool decides), frozen and
  validated once, when made; the command line builds it from its options by name (:meth:`from_options`).
- :class:`ScenePlan`: the same run resolved, made by :func:`dsen2cr.auto.plan_scene_run` only: device, backend
  candidates, precision, tile, overlap and batch as concrete values, no sentinels left.

Messages name the command-line option a setting comes from (``--feather``), since that is how users set them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsen2cr.bounds import Bounds, given_bounds
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD, GDAL_CACHE_BYTES, PRECISIONS
from dsen2cr.errors import DSen2CRError

if TYPE_CHECKING:
    import torch

    from dsen2cr.ensemble_file import EnsembleFile

#: Backends a user may ask for (``auto``: decided by :func:`dsen2cr.auto.plan_backend`).
BACKEND_CHOICES = ("auto", "eager", "compiled", "onnxruntime")
RESAMPLINGS = ("nearest", "bilinear")
#: ``--journal``: keep each predicted window beside the output while a scene runs (``auto``: decided by
#: :func:`dsen2cr.auto.resolve_journal`).
JOURNAL_CHOICES = ("auto", "on", "off")
#: ``--fetch-inputs``: download a scene's remote assets before its network runs (``auto``: decided by
#: :func:`dsen2cr.auto.resolve_fetch`, where their signed URLs would expire during the run).
FETCH_CHOICES = ("auto", "on", "off")
MASK_KINDS = ("paper", "product", "s2cloudless")
#: Where the paper mask's shadow thresholds take their image statistics: the whole scene, or a --bounds part.
MASK_STATISTICS = ("scene", "area")
#: The smallest tile the planner accepts (pixels).
MIN_TILE = 16
#: ``--feather`` default (pixels): the paper mask's score is smoothed over 5 px (grey closing radius 2, then
#: mean radius 3), so its boundary is uncertain by that much; blending over 5 px hides the step there and
#: keeps the clear land farther than 50 m from any cloud exactly as it was.
DEFAULT_FEATHER = 5
#: ``--feather`` at most (pixels): beyond a few hundred metres a blend is no longer a seam.
MAX_FEATHER = 64


@dataclass(frozen=True)
class SceneJob:
    """One scene to process. ``s2`` and ``s1`` are what ``--s2``/``--s1`` take (paths, zipped products, STAC
    items as paths or URLs, ``VV,VH`` pairs), kept as text."""

    s2: str
    s1: str | None
    out: Path
    mask_out: Path | None = None
    preview: Path | None = None
    uncertainty_out: Path | None = None
    stac_item: Path | None = None  # a STAC item (JSON) describing the outputs, written once they are in place
    bounds: Bounds | None = None  # the part of this scene (a manifest's bounds column), instead of --bounds

    def __post_init__(self) -> None:
        for name in (
            "out",
            "mask_out",
            "preview",
            "uncertainty_out",
            "stac_item",
        ):  # paths given as text (the Python API) become Paths
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for name in ("s2", "s1"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
        for value in (self.s2, self.s1, self.out, self.mask_out, self.preview, self.uncertainty_out, self.stac_item):
            if value is not None:
                check_utf8_name(value)


@dataclass(frozen=True)
class SceneSettings:
    """The settings of a ``remove-clouds`` run, shared by all its scenes, as given (``auto`` where the tool
    decides); each is checked once, here."""

    # the command line's --weights (several: an ensemble); the Python API passes a predictor instead
    weights: str | tuple[str, ...] | None = None
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    tile: int | str = "auto"
    overlap: int | None = None  # None: exact (twice the receptive-field radius)
    batch_size: int | str = "auto"
    memory_gib: float | None = None  # None: the device's budget (dsen2cr.auto.memory_budget)
    resampling: str = "nearest"
    s1_linear: bool = False
    s1_max_days: float | None = None  # S1 sensed further from the scene is refused (None: warned beyond 12 days)
    s2_offset: int | None = None
    # the part of each scene to process: left, bottom, right, top in bounds_crs (None: the scene's own CRS)
    bounds: tuple[float, float, float, float] | None = None
    bounds_crs: str | None = None
    mask: str = "paper"
    mask_statistics: str = "scene"  # the paper mask's statistics: of the whole scene, or of the --bounds part
    keep_clear: bool = False
    feather: int = DEFAULT_FEATHER
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD
    uncertainty_parts: bool = False  # the sigma file also holds an ensemble's aleatoric and epistemic sigma
    compression: str = "deflate"
    compression_level: int | None = None  # None: GDAL's default for the compression
    overwrite: bool = False
    skip_existing: bool = False  # scenes an earlier run finished are skipped (dsen2cr.scene.done)
    journal: str = "auto"  # each predicted window kept beside the output while the scene runs (dsen2cr.scene.journal)
    resume: bool = False  # a stopped scene goes on from the windows its journal holds (with overwrite too)
    fetch_inputs: str = "auto"  # remote assets downloaded beside the output before the network runs (inputs.fetch)
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.weights, list):  # argparse's nargs="+"
            object.__setattr__(self, "weights", tuple(self.weights))
        if self.bounds is not None:
            object.__setattr__(self, "bounds", tuple(self.bounds))
        self._check_bounds()
        for name in self._given_weights:
            check_utf8_name(name)
        _choice("--backend", self.backend, BACKEND_CHOICES)
        _choice("--precision", self.precision, PRECISIONS)
        _choice("--resampling", self.resampling, RESAMPLINGS)
        _choice("--journal", self.journal, JOURNAL_CHOICES)
        _choice("--fetch-inputs", self.fetch_inputs, FETCH_CHOICES)
        _choice("--mask", self.mask, MASK_KINDS)
        _choice("--mask-statistics", self.mask_statistics, MASK_STATISTICS)
        if self.mask_statistics != "scene" and self.mask != "paper":
            raise DSen2CRError(
                f"--mask-statistics: is for --mask paper's shadow thresholds; --mask {self.mask} has none"
            )
        if self.tile != "auto" and not (_is_int(self.tile) and int(self.tile) >= MIN_TILE):
            raise DSen2CRError(f"--tile: must be at least {MIN_TILE} pixels (or auto), got {self.tile}")
        if self.overlap is not None and not (_is_int(self.overlap) and self.overlap >= 0):
            raise DSen2CRError(f"--overlap: must be 0 or more pixels, got {self.overlap}")
        if self.batch_size != "auto" and not (_is_int(self.batch_size) and int(self.batch_size) >= 1):
            raise DSen2CRError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if self.s1_max_days is not None and not (math.isfinite(self.s1_max_days) and self.s1_max_days >= 0):
            raise DSen2CRError(f"--s1-max-days: must be 0 or more days, got {self.s1_max_days}")
        if self.memory_gib is not None and not (math.isfinite(self.memory_gib) and self.memory_gib > 0):
            raise DSen2CRError(f"--memory: must be a positive number of GiB, got {self.memory_gib}")
        if not (_is_int(self.feather) and self.feather >= 0):
            raise DSen2CRError(f"--feather: must be 0 or more pixels, got {self.feather}")
        if self.feather > MAX_FEATHER:
            raise DSen2CRError(f"--feather: must be in [0, {MAX_FEATHER}] pixels, got {self.feather}")
        if not 0.0 <= self.cloud_threshold <= 1.0:
            raise DSen2CRError(f"--cloud-threshold: must be a cloud score in [0, 1], got {self.cloud_threshold}")
        self.cog_options()  # compression and level known, and this GDAL writes them

    def _check_bounds(self) -> None:
        """``bounds`` (checked as :attr:`area`); ``bounds_crs`` only with them."""
        _ = self.area

    @functools.cached_property
    def area(self) -> Bounds | None:
        """``bounds`` in ``bounds_crs``, for every scene of the run (a job's own win: :func:`scene_bounds`); made
        once (its CRS parsed once)."""
        return given_bounds(self.bounds, self.bounds_crs)

    @property
    def weights_files(self) -> tuple[str, ...]:
        """The weights files (one, or an ensemble's members, those of an ensemble file too; none when a predictor is
        passed)."""
        return self._weights_split[0]

    @property
    def ensemble_file(self) -> EnsembleFile | None:
        """The ensemble file ``--weights`` names (its members and their sigma scale), or None."""
        return self._weights_split[1]

    @property
    def recorded_weights_files(self) -> tuple[str, ...]:
        """The files outputs record as their weights, in order: :attr:`weights_files`, then the ensemble file."""
        extra = (str(self.ensemble_file.path),) if self.ensemble_file is not None else ()
        return self.weights_files + extra

    @functools.cached_property
    def _weights_split(self) -> tuple[tuple[str, ...], EnsembleFile | None]:
        """The weights files and ensemble file of ``weights`` (an ensemble file read and checked once)."""
        from dsen2cr.ensemble_file import split_weights

        files, ensemble = split_weights(self._given_weights) if self._given_weights else ([], None)
        return tuple(files), ensemble

    @property
    def _given_weights(self) -> tuple[str, ...]:
        """``weights`` as given: one file, several, or none."""
        return (self.weights,) if isinstance(self.weights, str) else tuple(self.weights or ())

    def cog_options(self) -> dict[str, str | int]:
        """The COG creation options of ``compression`` at ``compression_level`` (checked against this GDAL)."""
        from dsen2cr.outputs.geotiff import check_compression_level, cog_options

        check_compression_level(self.compression, self.compression_level, name="--compress-level")
        return cog_options(self.compression, self.compression_level)

    @classmethod
    def from_options(cls, options: Any) -> SceneSettings:
        """The settings from an object with an attribute per field (an ``argparse.Namespace`` whose option
        destinations carry the field names); missing attributes keep their defaults, ``None`` too."""
        given = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if hasattr(options, f.name)}
        return cls(**{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)
class ScenePlan:
    """A run's settings resolved for one model and device (made by :func:`dsen2cr.auto.plan_scene_run`):
    ``backends`` are tried in order on the first batch (the last is the eager reference unless ``strict``,
    a backend or precision the user named, whose failure is an error); ``precision`` is ``fp32`` (IEEE),
    ``tf32``, ``fp16`` or ``bf16`` (:func:`dsen2cr.auto.resolve_precision`); ``finish_threads`` turn predicted windows
    into output pixels (keep-clear's map, distances, blend) side by side
    (:func:`dsen2cr.auto.resolve_finish_threads`); ``band_threads`` read a product's band files side by side,
    and the mask statistics pass's blocks (:func:`dsen2cr.auto.resolve_band_threads`); ``block_cache_bytes``
    bound GDAL's block cache (:func:`dsen2cr.auto.resolve_block_cache_bytes`); ``hold_bytes`` of predicted windows may
    wait in memory while the cloud mask's statistics pass runs (:func:`dsen2cr.auto.resolve_hold_bytes`)."""

    settings: SceneSettings
    device: torch.device
    backends: tuple[str, ...]
    strict_backend: bool
    precision: str
    tile: int
    overlap: int
    batch_size: int
    finish_threads: int = 1
    band_threads: int = 1
    block_cache_bytes: int = GDAL_CACHE_BYTES
    hold_bytes: int = 0


def scene_bounds(job: SceneJob, settings: SceneSettings) -> Bounds | None:
    """The part of ``job``'s scene to process: the job's own bounds, else the run's (None: the whole scene)."""
    return job.bounds if job.bounds is not None else settings.area


def check_utf8_name(path: str | Path) -> None:
    """Refuse a path that is not valid UTF-8 (a byte Python kept as a surrogate escape): GDAL opens files by
    UTF-8 names only. The message shows the undecodable bytes as ``\\xNN``."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise DSen2CRError(f"{shown}: file name is not valid UTF-8, which GDAL cannot open; rename it") from None


def _choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    """Refuse a value that is not one of ``choices``."""
    if value not in choices:
        raise DSen2CRError(f"{option}: expected one of {', '.join(choices)}, got {value!r}")


def _is_int(value: object) -> bool:
    """Whether ``value`` is an integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)
