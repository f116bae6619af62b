"""A scene run's outputs as its windows come: each tile's prediction made into output pixels (DN, the blend under
``--keep-clear``, sigma, the cloud/shadow map) and written to the COG, the sigma file, the map and the quicklook."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsen2cr.cloud_detection import CLOUD, SHADOW
from dsen2cr.inputs.readers import Grid
from dsen2cr.outputs.geotiff import cog_writer
from dsen2cr.preprocessing import NUM_S2_BANDS, S2_BANDS
from dsen2cr.quicklook import Quicklook
from dsen2cr.scene.checks import check_scene_room, sigma_band_count
from dsen2cr.scene.describe import (
    MASK_NODATA,
    OUTPUT_NODATA,
    SIGMA_NODATA,
    describe_bands,
    describe_mask,
    describe_sigma_bands,
    mask_codes,
    output_dn,
    output_tags,
    preview_mode,
    sigma_dn,
)
from dsen2cr.scene.masking import ReadWindow, blend, keep_clear_weights
from dsen2cr.scene.sources import SceneInputs
from dsen2cr.scene.tiles import Tile
from dsen2cr.settings import SceneJob, SceneSettings


@dataclass
class TileWriter:
    """Writes each tile's prediction (on the writer thread, which alone touches the output files, the masker
    and the quicklook while the loop runs) onto the outputs' ``grid`` (the scene's, or the part of it asked for)
    and counts valid pixels, S1 holes, skipped tiles and, where a map is made, its cloud and shadow pixels."""

    inputs: SceneInputs
    grid: Grid
    settings: SceneSettings
    job: SceneJob
    model: str = ""  # the model's description, for the quicklook's caption
    # COGs compressed while written: on a GPU, whose network leaves the CPU free; on a CPU the compression took
    # the network's cores (1.47x the plain run on 2 cores), so GDAL's copy compresses after the network there
    stream: bool = False
    journal_bytes: int = 0  # what the scene's journal will write beside the outputs
    missing: int = 0
    valid: int = 0
    skipped: int = 0
    mapped: int = 0  # valid pixels of the tiles with a cloud/shadow map, and of them cloud and shadow
    cloud: int = 0
    shadow: int = 0
    quicklook: Quicklook | None = None
    cog: Any = None
    mask: Any = None
    sigma: Any = None
    written: list[int] = field(default_factory=list)  # the predicted bands that the outputs hold
    sigma_written: list[int] = field(default_factory=list)  # and of sigma (with the parts: three times)

    def open(self, outputs: contextlib.ExitStack) -> None:
        """Open the outputs in ``outputs``; they are left in reverse order: the COG is made first (should that
        fail, the map is removed), the quicklook saved last, once the COG is in place."""
        s2, grid, job = self.inputs.s2, self.grid, self.job
        grid_profile = {"width": grid.width, "height": grid.height, "crs": grid.crs, "transform": grid.transform}
        check_scene_room(job, grid.height, grid.width, len(s2.bands), self.settings, self.stream, self.journal_bytes)
        options = self.settings.cog_options()
        if job.preview is not None:
            caption = f"{Path(job.s2).name}: model {self.model}; cloud/shadow mask: {self.settings.mask}"
            self.quicklook = Quicklook(grid.height, grid.width, mode=preview_mode(self.settings), caption=caption)
            outputs.push(save_on_success(self.quicklook, job.preview))
        self.mask = outputs.enter_context(optional_mask(job.mask_out, grid_profile, self.settings, self.stream))
        if job.uncertainty_out is not None:
            count = sigma_band_count(len(s2.bands), self.settings)
            sigma_profile = dict(grid_profile, count=count, dtype="float32", nodata=SIGMA_NODATA)
            sigma = cog_writer(job.uncertainty_out, sigma_profile, options, overviews="average", stream=self.stream)
            self.sigma = outputs.enter_context(sigma)
            describe_sigma_bands(self.sigma, s2.bands, self.settings)
        profile = dict(grid_profile, count=len(s2.bands), dtype="uint16", nodata=OUTPUT_NODATA)
        dst = outputs.enter_context(cog_writer(job.out, profile, options, overviews="average", stream=self.stream))
        describe_bands(dst, s2.bands)
        dst.update_tags(**output_tags(s2))
        self.cog = dst
        self.written = [S2_BANDS.index(band) for band in s2.bands]  # the input's bands: never a made-up B10
        parts = range(3 if self.settings.uncertainty_parts else 1)  # the total sigma's bands, then the parts'
        self.sigma_written = [part * NUM_S2_BANDS + band for part in parts for band in self.written]

    def prepare(
        self, tile: Tile, pred: np.ndarray, dn: np.ndarray, valid: np.ndarray, holes: int, window_dn: np.ndarray
    ) -> TileOutput:
        """One tile's output pixels (any thread: it writes nothing): the prediction in DN, blended with the
        input under ``--keep-clear``, its sigma; a prediction with 26 channels carries the variances after
        the 13 means (``--uncertainty-out``), with 39 an ensemble's aleatoric and epistemic variances
        (``--uncertainty-parts``; sigma then holds the total's, the aleatoric and the epistemic sigma). The
        cloud/shadow map is made from the window's DN as read (``window_dn``) where it holds the pixels the map
        needs around the core."""
        pred, variance = pred[:NUM_S2_BANDS], pred[NUM_S2_BANDS:]
        out_dn = output_dn(pred, valid)
        masker, core_mask, weights = self.inputs.masker, None, None
        read = ReadWindow(tile.window, window_dn)
        if self.settings.keep_clear and masker is not None:
            weights, core_mask = keep_clear_weights(masker, tile.core, self.settings.feather, read)
            out_dn = blend(dn, out_dn, weights)
            out_dn[:, ~valid] = OUTPUT_NODATA
        elif masker is not None:
            core_mask = masker.window(tile.core, read)
        if len(variance) > NUM_S2_BANDS:  # the parts: the total's variance first
            variance = np.concatenate([variance[:NUM_S2_BANDS] + variance[NUM_S2_BANDS:], variance])
        sigma = None if self.sigma is None else sigma_dn(variance, valid, weights)
        return TileOutput(tile, dn, valid, holes, out_dn, sigma, core_mask)

    def write(self, done: TileOutput) -> None:
        """Write one prepared tile to the outputs and count it (the writer thread only)."""
        tile, valid = done.tile, done.valid
        self.cog.write(done.out_dn[self.written], window=tile.out)
        if done.sigma is not None:
            self.sigma.write(done.sigma[self.sigma_written], window=tile.out)
        if self.quicklook is not None:  # the total sigma
            total = None if done.sigma is None else done.sigma[:NUM_S2_BANDS]
            self.quicklook.add(tile.out, done.dn, done.out_dn, done.core_mask, total)
        self.missing += done.holes
        self.valid += int(valid.sum())
        self.skipped += not valid.any()
        if done.core_mask is not None:
            self.mapped += int(valid.sum())
            self.cloud += int(np.count_nonzero(valid & (done.core_mask == CLOUD)))
            self.shadow += int(np.count_nonzero(valid & (done.core_mask == SHADOW)))
            if self.mask is not None:
                self.mask.write(mask_codes(done.core_mask, valid)[None], window=tile.out)

    def mask_percent(self) -> tuple[float, float] | None:
        """The map's cloud and shadow shares of the valid pixels, in percent; None where no map was made."""
        return (100 * self.cloud / self.mapped, 100 * self.shadow / self.mapped) if self.mapped else None

    def mask_shares(self) -> dict[str, str]:
        """:meth:`mask_percent` as tags (``DSEN2CR_CLOUD_PERCENT``, ``DSEN2CR_SHADOW_PERCENT``); none where no map
        was made."""
        percent = self.mask_percent()
        if percent is None:
            return {}
        return {"DSEN2CR_CLOUD_PERCENT": f"{percent[0]:.2f}", "DSEN2CR_SHADOW_PERCENT": f"{percent[1]:.2f}"}


@dataclass
class TileOutput:
    """One tile's output pixels, ready to write: the input DN and valid map of its core, its valid pixels
    without S1, the output DN, sigma in DN (or None) and the cloud/shadow map (or None)."""

    tile: Tile
    dn: np.ndarray
    valid: np.ndarray
    holes: int
    out_dn: np.ndarray
    sigma: np.ndarray | None
    core_mask: np.ndarray | None


def save_on_success(quicklook: Quicklook, path: str | Path) -> Callable[..., bool]:
    """An exit callback that saves the quicklook when the block it guards succeeded."""

    def save(exc_type: type[BaseException] | None, *exc: object) -> bool:
        if exc_type is None:
            quicklook.save(path)
        return False  # never swallow the block's error

    return save


@contextlib.contextmanager
def optional_mask(path: str | Path | None, grid_profile: dict, settings: SceneSettings, stream: bool) -> Iterator[Any]:
    """A writer for the cloud/shadow map (:func:`~dsen2cr.scene.describe.describe_mask`), or None."""
    if path is None:
        yield None
        return
    profile = dict(grid_profile, count=1, dtype="uint8", nodata=MASK_NODATA)
    with cog_writer(path, profile, settings.cog_options(), overviews="mode", stream=stream) as dataset:
        describe_mask(dataset, settings)
        yield dataset
