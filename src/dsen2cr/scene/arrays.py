"""Cloud removal of a scene held in memory (numpy arrays), for notebooks and pipelines that already read it:
the same run as :func:`dsen2cr.scene.remove.remove_clouds` (tiling, masks, ``--keep-clear``, checks), on
GeoTIFF copies in a temporary folder that is removed afterwards; the outputs come back as arrays."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.product import band_of
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.predictor import Predictor
from dsen2cr.preprocessing import NUM_S1_BANDS, S2_BANDS
from dsen2cr.rasters import open_raster
from dsen2cr.scene.checks import check_uncertainty_output
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.settings import SceneJob, SceneSettings

#: The grid arrays run on when the caller gives none: 10 m pixels in UTM 32N (the arrays' own position does not
#: change the result; only S1 on another grid would need the real one).
PLACEHOLDER_GRID = (CRS.from_epsg(32632), from_origin(500000, 5000000, 10, 10))


@dataclass(frozen=True)
class ArrayResult:
    """What :func:`remove_clouds_array` returns: the cloud-free image (uint16 DN, the input's bands, 0 = no
    data), the cloud/shadow map (uint8: 0 clear, 1 cloud, 2 shadow, 255 no data), sigma per band in DN (float32,
    -1 = no data) when asked for, and the tags a GeoTIFF output would carry (model, weights, precision, ...);
    with ``uncertainty_parts``, an ensemble's aleatoric and epistemic sigma (sigma^2 = their squares' sum)."""

    image: np.ndarray
    mask: np.ndarray
    sigma: np.ndarray | None
    tags: dict[str, str]
    sigma_aleatoric: np.ndarray | None = None
    sigma_epistemic: np.ndarray | None = None


def remove_clouds_array(
    predictor: Predictor,
    s2_dn: np.ndarray,
    s1_db: np.ndarray | None = None,
    *,
    settings: SceneSettings | None = None,
    crs: Any = None,
    transform: Affine | None = None,
    band_names: list[str] | None = None,
    uncertainty: bool = False,
    temporary_folder: str | Path | None = None,
) -> ArrayResult:
    """Remove the clouds of ``s2_dn`` ((13, H, W) L1C or (12, H, W) L2A DN as Sentinel-2 delivers them, without offset;
    ``band_names`` for another order: the result's bands are in the usual one) with ``s1_db`` ((2, H, W) VV, VH in
    dB on the same grid) for a model with SAR. ``crs`` and ``transform`` place the arrays (a placeholder grid when
    omitted); ``settings`` as :func:`~dsen2cr.scene.remove.remove_clouds` takes them (``keep_clear``, ``mask``,
    ...); ``uncertainty``: also return sigma (a model with a variance output; with the settings'
    ``uncertainty_parts``, an ensemble's, also its two parts). ``temporary_folder``: where the
    copies and outputs are written while the scene runs (default: the system's, ``$TMPDIR``; a full tile takes some
    10 GB there)."""
    _check_arrays(s2_dn, s1_db, band_names)
    if band_names is not None:
        s2_dn = s2_dn[_usual_order(band_names)]
    s2_dn, s1_db = _fill_masked(s2_dn, s1_db)
    if (crs is None) != (transform is None):
        raise DSen2CRError("crs and transform: give both (the arrays' grid) or neither (a placeholder grid)")
    grid_crs, grid_transform = (crs, transform) if crs is not None else PLACEHOLDER_GRID
    if temporary_folder is not None and not Path(temporary_folder).is_dir():
        problem = "is a file, not a folder" if Path(temporary_folder).exists() else "no such folder"
        raise DSen2CRError(f"temporary_folder: {temporary_folder}: {problem}")
    names = S2_BANDS if s2_dn.shape[0] == len(S2_BANDS) else [b for b in S2_BANDS if b != "B10"]
    settings = dataclasses.replace(
        settings or SceneSettings(), progress=False, overwrite=False, journal="off", resume=False
    )
    if predictor.include_sar and s1_db is None:
        raise DSen2CRError("s1_db: these weights need SAR input: VV, VH in dB on the grid of s2_dn, a (2, H, W) array")
    if settings.uncertainty_parts and not uncertainty:
        raise DSen2CRError("uncertainty_parts: needs uncertainty=True (the parts are those of sigma)")
    if settings.bounds is not None:
        raise DSen2CRError(
            "bounds: remove_clouds_array returns the arrays' whole grid; slice its result for a part (the pixels a "
            "--bounds run of the part would give)"
        )
    if uncertainty:
        check_uncertainty_output("uncertainty=True", predictor.uncertainty, predictor.weights, settings)
    with tempfile.TemporaryDirectory(prefix="dsen2cr-arrays-", dir=temporary_folder) as folder:
        work = Path(folder)
        s2 = write_geotiff(work / "s2.tif", s2_dn, crs=grid_crs, transform=grid_transform, band_names=names)
        s1 = None
        if s1_db is not None:  # no band names: the array states none, so its band order is checked by its values
            s1 = write_geotiff(work / "s1.tif", s1_db.astype(np.float32), crs=grid_crs, transform=grid_transform)
        job = SceneJob(
            str(s2),
            None if s1 is None else str(s1),
            work / "out.tif",
            mask_out=work / "mask.tif",
            uncertainty_out=work / "sigma.tif" if uncertainty else None,
        )
        copies = {str(s2): "s2_dn", **({} if s1 is None else {str(s1): "s1_db"})}
        copies[f"{job.out}: {work} has"] = f"temporary_folder {work.parent} has"  # the room check's, named for you
        try:
            with _naming_arguments(copies):
                remove_clouds(predictor, job, settings)
        except DSen2CRError as error:  # name the arguments, not the temporary files they were written to
            raise DSen2CRError(_name_arguments(str(error), copies)) from None
        with open_raster(job.out, what="output") as out, open_raster(work / "mask.tif", what="mask") as mask:
            image, tags, codes = out.read(), out.tags(), mask.read(1)
        tags.update(DSEN2CR_S2="s2_dn", DSEN2CR_S1="none" if s1 is None else "s1_db")
        sigmas: list[np.ndarray | None] = [None] * 3
        if job.uncertainty_out is not None:
            with open_raster(job.uncertainty_out, what="sigma") as sigma_file:
                every = sigma_file.read()
            sigmas = list(np.split(every, len(every) // len(image)))  # the total, then any parts
    return ArrayResult(image, codes, sigmas[0], tags, *sigmas[1:])


def _check_arrays(s2_dn: np.ndarray, s1_db: np.ndarray | None, band_names: list[str] | None) -> None:
    """One-line errors naming the argument, before anything is written."""
    if not isinstance(s2_dn, np.ndarray) or s2_dn.ndim != 3:
        raise DSen2CRError(
            f"s2_dn: expected a (bands, height, width) array, got {getattr(s2_dn, 'shape', type(s2_dn))}"
        )
    bands = s2_dn.shape[0]
    if band_names is None and bands not in (12, 13):
        turn = "; it looks bands last: np.moveaxis(s2_dn, -1, 0)" if s2_dn.shape[-1] in (12, 13) else ""
        raise DSen2CRError(f"s2_dn: {bands} bands; expected 13 (L1C) or 12 (L2A){turn}")
    if band_names is not None and len(band_names) != bands:
        raise DSen2CRError(f"band_names: {len(band_names)} names for {bands} bands")
    if s1_db is not None and not isinstance(s1_db, np.ndarray):
        raise DSen2CRError(f"s1_db: expected a (2, height, width) array, got {type(s1_db)}")
    if s1_db is not None and (s1_db.ndim != 3 or s1_db.shape != (NUM_S1_BANDS, *s2_dn.shape[1:])):
        raise DSen2CRError(f"s1_db: expected shape (2, {s2_dn.shape[1]}, {s2_dn.shape[2]}), got {s1_db.shape}")


def _usual_order(band_names: list[str]) -> list[int]:
    """The indices that put bands named ``band_names`` (B2, B02, b8a) in the usual order: B1 ... B12 with B8A
    after B8 (L1C), the same without B10 (L2A)."""
    names = [band_of(str(name)) for name in band_names]
    unknown = [given for given, name in zip(band_names, names, strict=True) if name is None]
    if unknown:
        raise DSen2CRError(f"band_names: {unknown[0]!r} is not a Sentinel-2 band (B1 ... B12, B8A; B01 spellings too)")
    repeated = [name for name in S2_BANDS if names.count(name) > 1]
    if repeated:
        raise DSen2CRError(f"band_names: {', '.join(repeated)} named twice")
    usual = S2_BANDS if "B10" in names else [name for name in S2_BANDS if name != "B10"]
    missing = [name for name in usual if name not in names]
    if missing:
        raise DSen2CRError(
            f"band_names: {', '.join(missing)} missing; expected the 13 bands of L1C, or the 12 of L2A (no B10)"
        )
    return [names.index(name) for name in usual]


def _fill_masked(s2_dn: np.ndarray, s1_db: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Masked arrays (``rasterio``'s ``read(masked=True)``) as the files' no data: an S2 pixel masked in any band
    is 0 in every band, a masked S1 value NaN (filled with the scene's mean, as S1's no data is)."""
    if isinstance(s2_dn, np.ma.MaskedArray):
        hidden = np.ma.getmaskarray(s2_dn).any(axis=0)
        s2_dn = np.where(hidden, 0, s2_dn.filled(0)).astype(s2_dn.dtype)
    if isinstance(s1_db, np.ma.MaskedArray):
        s1_db = np.ma.filled(s1_db.astype(np.float32), np.nan)
    return s2_dn, s1_db


def _name_arguments(text: str, copies: dict[str, str]) -> str:
    """``text`` with the temporary copies' paths replaced by the names of the arguments they hold."""
    for path, name in copies.items():
        text = text.replace(path, name)
    return text


class _ArgumentNames(logging.Filter):
    """Rewrite a log record's message so that it names the arguments instead of their temporary copies."""

    def __init__(self, copies: dict[str, str]) -> None:
        super().__init__()
        self.copies = copies

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(path in message for path in self.copies):
            record.msg, record.args = _name_arguments(message, self.copies), None
        return True


@contextlib.contextmanager
def _naming_arguments(copies: dict[str, str]) -> Iterator[None]:
    """For the block, the package's log records name the arguments, not their copies (a logger's filter sees
    only the records made on it, so each of the package's loggers gets one)."""
    rename = _ArgumentNames(copies)
    loggers = [
        logger
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and (name == "dsen2cr" or name.startswith("dsen2cr."))
    ]
    for logger in loggers:
        logger.addFilter(rename)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(rename)
