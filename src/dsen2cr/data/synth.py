"""Synthetic SEN12MS-CR-like data: clear scenes, SAR, and plausible clouds with displaced shadows.

Used by the tests, the benchmarks and the bundled sample (clouds over real clear imagery).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from dsen2cr.choices import MAX_SEED
from dsen2cr.data.layout import Triplet, release_triplet, write_file_list
from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import output_folder
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.preprocessing import S1_BANDS, S2_BANDS

SEASONS = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
#: Top-of-atmosphere reflectance of four surfaces in the 13 L1C bands (B1 ... B12).
_SURFACES = np.array(
    [
        [0.12, 0.09, 0.07, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02, 0.01, 0.002, 0.01, 0.005],  # water
        [0.12, 0.09, 0.08, 0.05, 0.10, 0.25, 0.30, 0.33, 0.35, 0.12, 0.004, 0.18, 0.09],  # vegetation
        [0.14, 0.12, 0.14, 0.18, 0.21, 0.23, 0.25, 0.27, 0.28, 0.10, 0.006, 0.32, 0.25],  # bare soil
        [0.16, 0.14, 0.14, 0.15, 0.17, 0.18, 0.19, 0.20, 0.21, 0.08, 0.005, 0.22, 0.18],  # built-up
    ]
)
#: Mean backscatter (dB) of the same surfaces, VV and VH.
_SURFACE_DB = np.array([[-20.0, -27.0], [-9.0, -15.0], [-12.0, -19.0], [-4.0, -11.0]])
#: Reflectance of an optically thick cloud: bright and flat in the visible, lower in the SWIR.
_CLOUD = np.array([0.55, 0.56, 0.56, 0.56, 0.56, 0.55, 0.54, 0.53, 0.53, 0.30, 0.05, 0.42, 0.30])
#: How much thin (cirrus-like) cloud shows in B10 per unit opacity.
_CIRRUS_B10 = 0.03


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, scales: tuple[float, ...] = (32, 16, 8, 4, 2)):
    """Spatially coherent noise in [0, 1]: smoothed Gaussian noise summed over octaves (weight ~ scale)."""
    total = np.zeros(shape)
    for sigma in scales:
        layer = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
        total += sigma * layer / (layer.std() + 1e-12)
    total -= total.min()
    return total / (total.max() + 1e-12)


def synthetic_clear_scene(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A clear S2 scene (13, H, W) uint16 DN and its S1 (2, H, W) float32 dB, from a random land-cover mix."""
    h, w = size
    logits = np.stack([fractal_noise(size, rng, (24, 12, 6)) * 6 for _ in range(len(_SURFACES))])
    weights = np.exp(logits - logits.max(0))
    weights /= weights.sum(0)
    texture = 1 + 0.08 * (fractal_noise(size, rng, (4, 2, 1)) - 0.5)
    reflectance = np.einsum("khw,kb->bhw", weights, _SURFACES) * texture
    s2 = np.clip(np.rint(reflectance * 10000), 1, 65535).astype(np.uint16)
    linear = np.einsum("khw,kp->phw", weights, 10 ** (_SURFACE_DB / 10))
    speckle = rng.gamma(shape=4.0, scale=0.25, size=(2, h, w))  # 4-look speckle, mean 1
    s1 = (10 * np.log10(linear * speckle)).astype(np.float32)
    return s2, s1


@dataclass(frozen=True)
class CloudSettings:
    """Ranges the cloud generator draws from."""

    coverage: tuple[float, float] = (0.1, 0.7)
    shadow_shift: tuple[int, int] = (6, 24)
    shadow_strength: float = 0.65


def add_synthetic_clouds(
    clear_dn: np.ndarray, rng: np.random.Generator, settings: CloudSettings = CloudSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """Put clouds and their shadows over a clear (13, H, W) DN image; return (cloudy DN, cloud opacity).

    Opacity is fractal noise cut at a random coverage, with soft edges, so cloud cores are thick and
    edges thin. Thick cloud is bright and flat in the visible; thin cloud shows in B10 (cirrus). Shadows are
    the opacity displaced by a random offset, darkening the ground where no cloud covers it.
    """
    _, h, w = clear_dn.shape
    noise = fractal_noise((h, w), rng)
    coverage = rng.uniform(*settings.coverage)
    cut = np.quantile(noise, 1 - coverage)
    opacity = np.clip((noise - cut) / 0.15, 0, 1) ** 0.8
    dy, dx = (int(rng.integers(*settings.shadow_shift)) * int(rng.choice([-1, 1])) for _ in range(2))
    shadow = ndimage.shift(opacity, (dy, dx), order=0, mode="constant", cval=0.0)
    ground = clear_dn.astype(np.float64) / 10000
    ground *= 1 - settings.shadow_strength * shadow * (1 - opacity)
    brightness = rng.uniform(0.85, 1.2)
    cloudy = (1 - opacity) * ground + opacity * (_CLOUD[:, None, None] * brightness)
    cloudy[S2_BANDS.index("B10")] += _CIRRUS_B10 * opacity * (1 - opacity) * 4
    return np.clip(np.rint(cloudy * 10000), 1, 65535).astype(np.uint16), opacity.astype(np.float32)


def _split_of_roi(index: int) -> int:
    """Split of the ``index``-th ROI of a synthetic tree: train, val, test, train, train, ..."""
    return (1, 2, 3, 1, 1)[index % 5]


#: Bounds of ``data synth``: triplets and patch size (pixels).
MAX_COUNT = 100_000
MAX_SIZE = 4096


def write_synthetic_dataset(
    out: str | Path, count: int, *, size: int = 256, seed: int = 0, patches_per_roi: int = 2
) -> tuple[list[Triplet], Path]:
    """Write ``count`` triplets as an official-layout (nested) SEN12MS-CR tree under ``out``, plus its file list.

    GeoTIFFs are real: UTM CRS, 10 m transform, uint16 S2 (13 bands), float32 S1 dB (VV, VH). ROIs get the
    splits train, val, test, train, train, ... in turn. Returns the triplets and the file list path.
    """
    if not 1 <= count <= MAX_COUNT:
        raise DSen2CRError(f"count: must be in [1, {MAX_COUNT}], got {count}")
    if not 16 <= size <= MAX_SIZE:
        raise DSen2CRError(f"size: must be in [16, {MAX_SIZE}] pixels, got {size}")
    if not 0 <= seed <= MAX_SEED:
        raise DSen2CRError(f"seed: must be in [0, {MAX_SEED}], got {seed}")
    # Its season names are real ones: writing into an existing tree could overwrite a real dataset's patches, so
    # only a new or empty folder is written; a run that fails or is stopped removes what it wrote (a rerun works).
    owned = [f"{season}_{kind}" for season in SEASONS for kind in ("s1", "s2", "s2_cloudy")] + ["files.csv"]
    hint = "choose a new or empty folder"
    with output_folder(out, owned=owned, overwrite=False, what="a SEN12MS-CR tree", hint=hint) as folder:
        return _write_triplets(folder, count, size, seed, patches_per_roi)


def _write_triplets(out: Path, count: int, size: int, seed: int, patches_per_roi: int) -> tuple[list[Triplet], Path]:
    """The triplets and file list of :func:`write_synthetic_dataset` into the prepared folder ``out``."""
    rng = np.random.default_rng(seed)
    triplets = []
    for i in range(count):
        roi_index = i // patches_per_roi
        season = SEASONS[roi_index % len(SEASONS)]
        roi, patch = roi_index + 1, i % patches_per_roi
        clear, s1 = synthetic_clear_scene((size, size), rng)
        cloudy, _ = add_synthetic_clouds(clear, rng)
        zone = 32 + roi_index % 6
        crs = CRS.from_epsg(32600 + zone)
        transform = from_origin(300000 + 10 * size * patch, 5000000 + 20000 * roi_index, 10, 10)
        triplet = release_triplet(out, season, roi, patch, _split_of_roi(roi_index))
        for path, array, bands in zip(
            triplet.paths().values(), (s1, clear, cloudy), (S1_BANDS, S2_BANDS, S2_BANDS), strict=True
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_geotiff(path, array, crs=crs, transform=transform, band_names=bands)
        triplets.append(triplet)
    file_list = write_file_list(triplets, out / "files.csv", out)
    return triplets, file_list
