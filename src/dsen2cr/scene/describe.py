"""What a scene's outputs hold and say about themselves (docs/design.md §4.4): their values (DN, sigma, the
map's codes, each with its no-data value), band names, scale and colours that GIS software reads, and the tags
that record what computed the values and how the run was asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from dsen2cr.inputs import map_s1_files
from dsen2cr.inputs.product import is_url
from dsen2cr.inputs.provenance import s1_units_tags, s2_read_tags
from dsen2cr.inputs.readers import S2Source
from dsen2cr.preprocessing import S2_CLIP_DN, S2_MODEL_SCALE, S2_REFLECTANCE_SCALE
from dsen2cr.said_warnings import MAX_LISTED
from dsen2cr.settings import SceneJob, ScenePlan, SceneSettings

#: The image's value where the input has no data (valid pixels are clipped to [1, 10000]).
OUTPUT_NODATA = 0
#: The sigma map's value where the input has no data (sigma is never negative).
SIGMA_NODATA = -1.0
#: The cloud/shadow map's classes (uint8 code, name, colour of its colour table) and its no-data code.
MASK_CLASSES = ((0, "clear", (90, 120, 90)), (1, "cloud", (255, 255, 255)), (2, "shadow", (30, 30, 110)))
MASK_NODATA = 255


def output_dn(pred: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Model units to uint16 DN in [1, 10000] on valid pixels (0 stays reserved for nodata)."""
    scaled = np.multiply(pred, np.float32(S2_MODEL_SCALE))  # one temporary, rounded and clipped in place
    np.clip(np.rint(scaled, out=scaled), 1, S2_CLIP_DN[1], out=scaled)
    dn = scaled.astype(np.uint16)
    dn[:, ~valid] = OUTPUT_NODATA
    return dn


def sigma_dn(variance: np.ndarray, valid: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """sigma in DN (float32) from variances in model units; under ``--keep-clear`` scaled by the prediction's
    weight (0 where the input is kept: the input is taken as exact; the blend's sigma at a feathered edge);
    :data:`SIGMA_NODATA` where S2 has no data."""
    sigma = np.sqrt(variance, dtype=np.float32) * np.float32(S2_MODEL_SCALE)
    if weights is not None:
        sigma *= weights[None].astype(np.float32)
    sigma[:, ~valid] = SIGMA_NODATA
    return sigma


def mask_codes(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The written cloud/shadow map: uint8 codes of :data:`MASK_CLASSES` from the internal map (1 cloud, -1
    shadow, 0 clear), :data:`MASK_NODATA` where S2 has no data (never "shadow" or "clear")."""
    codes = np.where(mask == 1, 1, np.where(mask == -1, 2, 0)).astype(np.uint8)
    codes[~valid] = MASK_NODATA
    return codes


def describe_mask(dataset: Any, settings: SceneSettings) -> None:
    """The cloud/shadow map's colour table, the class names in its description and tags, and its mask kind
    (s2cloudless has no shadow class)."""
    classes = [c for c in MASK_CLASSES if settings.mask != "s2cloudless" or c[1] != "shadow"]  # clouds only
    names = ", ".join(f"{code} {name}" for code, name, _ in classes) + f", {MASK_NODATA} no data"
    what = "cloud map" if settings.mask == "s2cloudless" else "cloud/shadow map"
    dataset.set_band_description(1, f"{what} ({settings.mask}): {names}")
    dataset.update_tags(1, CATEGORIES=names)
    dataset.update_tags(DSEN2CR_MASK=settings.mask, DSEN2CR_MASK_CLASSES=names)
    dataset.write_colormap(1, {**{code: (*rgb, 255) for code, _, rgb in classes}, MASK_NODATA: (0, 0, 0, 0)})


def describe_sigma_bands(dataset: Any, bands: list[str], settings: SceneSettings) -> None:
    """The sigma map's band names (``sigma B02``; with ``--uncertainty-parts`` then ``aleatoric sigma B02``
    and ``epistemic sigma B02``), what its values mean, and the image's scale (DN x 0.0001 = reflectance), so
    that readers applying scales show image and sigma in one unit."""
    parts = ("", "aleatoric ", "epistemic ") if settings.uncertainty_parts else ("",)
    names = [(f"{part}sigma {name}", name) for part in parts for name in bands]
    for index, (description, name) in enumerate(names, start=1):
        dataset.set_band_description(index, description)
        dataset.update_tags(index, BAND=name)
    _declare_reflectance_scale(dataset, len(names))
    kept = (
        "0 where --keep-clear kept the input, scaled by the blend weight at its edge; " if settings.keep_clear else ""
    )
    n = len(bands)
    split = (
        f". Bands 1-{n}: the total sigma; {n + 1}-{2 * n}: its aleatoric part (from the mean of the ensemble "
        f"members' predicted variances); {2 * n + 1}-{3 * n}: its epistemic part (from the variance of their "
        "predictions); total^2 = aleatoric^2 + epistemic^2"
        if settings.uncertainty_parts
        else ""
    )
    dataset.update_tags(
        DSEN2CR_UNCERTAINTY=f"predicted standard deviation per band and pixel, DN (reflectance x 10000); {kept}"
        f"{SIGMA_NODATA:g} = no data{split}"
    )


def describe_bands(dataset: Any, bands: list[str]) -> None:
    """Band names, the reflectance scale (viewers show DN x 0.0001: reflectance) and red/green/blue colour
    interpretation on B4/B3/B2, so QGIS shows a true-colour image of reflectances at once."""
    from rasterio.enums import ColorInterp

    colours = {"B4": ColorInterp.red, "B3": ColorInterp.green, "B2": ColorInterp.blue}
    for index, name in enumerate(bands, start=1):
        dataset.set_band_description(index, name)
        dataset.update_tags(index, BAND=name)
    _declare_reflectance_scale(dataset, len(bands))
    dataset.colorinterp = [colours.get(name, ColorInterp.undefined) for name in bands]


def _declare_reflectance_scale(dataset: Any, count: int) -> None:
    """Scale 1 / 10000, offset 0 on every band: readers that apply scales (QGIS, rioxarray) show DN as
    reflectance."""
    dataset.scales = [1 / S2_REFLECTANCE_SCALE] * count
    dataset.offsets = [0.0] * count


def output_tags(s2: S2Source) -> dict[str, str]:
    """Metadata of an output: what its DN mean, so that no one applies an offset twice, and how the S2 it was
    computed from was read (:func:`~dsen2cr.inputs.provenance.s2_read_tags`)."""
    return {"DSEN2CR_RADIOMETRY": "reflectance x 10000, no offset; 0 = nodata", **s2_read_tags(s2)}


def run_tags(settings: SceneSettings) -> dict[str, str]:
    """Metadata of an output: the settings that decide which pixels are the model's."""
    return {
        "DSEN2CR_KEEP_CLEAR": f"yes, feather {settings.feather} px" if settings.keep_clear else "no (every pixel)",
        "DSEN2CR_MASK": settings.mask,
    }


def input_tags(job: SceneJob, settings: SceneSettings) -> dict[str, str]:
    """Metadata of every output of a scene, its cloud/shadow map too: the scene and S1 it was made from (file
    names, never a machine's folders), how S1 was read (dB, or linear power converted), and the paper mask's cloud
    threshold and where its shadow thresholds took their statistics (``scene`` or the ``area`` of --bounds)."""
    units = s1_units_tags(settings.s1_linear)
    return {
        "DSEN2CR_S2": _file_name(job.s2),
        "DSEN2CR_S1": map_s1_files(job.s1, _file_name) if job.s1 else "none",
        **(units if job.s1 else {}),
        **threshold_tags(settings.mask, settings.cloud_threshold),
        **({"DSEN2CR_MASK_STATISTICS": settings.mask_statistics} if settings.mask == "paper" else {}),
    }


def threshold_tags(mask: str, cloud_threshold: float) -> dict[str, str]:
    """``DSEN2CR_CLOUD_THRESHOLD`` of the paper's detector (``mask`` ``paper``); nothing for other masks."""
    return {"DSEN2CR_CLOUD_THRESHOLD": f"{cloud_threshold:g}"} if mask == "paper" else {}


def scene_tags(
    job: SceneJob, plan: ScenePlan, exact_overlap: int, s1_filled: float, s1_fill_db: tuple[float, float] | None
) -> dict[str, str]:
    """Metadata of an output image (and sigma map): :func:`run_tags`, :func:`input_tags`, the tiling (exact, or
    an overlap below ``exact_overlap``) and the share of valid pixels where S1 had no data and its scene mean
    (``s1_fill_db``, given when that share is above 0) filled in."""
    exact = (
        "exact: whole-image inference"
        if plan.overlap >= exact_overlap
        else f"below the exact {exact_overlap} px: pixels near window edges differ from whole-image inference"
    )
    filled = "none"
    if s1_filled > 0 and s1_fill_db is not None:
        filled = (
            f"{100 * s1_filled:.1f}% of the valid pixels, with the scene's mean (VV {s1_fill_db[0]:.1f} dB, VH "
            f"{s1_fill_db[1]:.1f} dB)"
        )
    return {
        **run_tags(plan.settings),
        **input_tags(job, plan.settings),
        "DSEN2CR_TILING": f"windows of at most {plan.tile} px, overlap {plan.overlap} px ({exact})",
        "DSEN2CR_S1_FILLED": filled,
    }


def warnings_tag(said: Sequence[str], files: Sequence[str]) -> dict[str, str]:
    """``DSEN2CR_WARNINGS``: the warnings ``said`` while a scene ran, one a line (at most
    :data:`~dsen2cr.said_warnings.MAX_LISTED`), the scene's ``files`` (its inputs' and outputs' paths) named by their
    file names, as the other tags name them (never their folders); nothing where none was said."""
    if not said:
        return {}
    paths = sorted({path for path in files if _file_name(path) != path}, key=len, reverse=True)  # longest first
    lines = []
    for message in said[:MAX_LISTED]:
        for path in paths:
            message = message.replace(path, _file_name(path))
        lines.append(message)
    if len(said) > MAX_LISTED:
        lines.append(f"… and {len(said) - MAX_LISTED} more (on the console)")
    return {"DSEN2CR_WARNINGS": "\n".join(lines)}


def _file_name(text: str) -> str:
    """The file name of a path or URL (its last segment), or the text itself when it has none."""
    return Path(urlparse(text).path if is_url(text) else text).name or text


def preview_mode(settings: SceneSettings) -> str:
    """How the output was made, for the title of its quicklook."""
    if settings.keep_clear:
        return f"--keep-clear (clear pixels kept, clouds and shadows predicted, {settings.feather} px blend)"
    return "every pixel predicted"
