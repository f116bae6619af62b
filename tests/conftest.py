"""Shared test helpers: tiny, seeded SEN12MS-CR-layout GeoTIFFs with a real CRS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr.data.layout import Triplet, release_triplet
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)


def write_release_triplet(
    root: Path,
    season: str,
    roi: int,
    patch: int,
    *,
    size: int = 32,
    seed: int = 0,
    s1_bands: int = 2,
    s1_size: int | None = None,
    s1_crs: CRS = UTM32N,
) -> Triplet:
    """Write one triplet in the official nested layout with random but valid values; return it."""
    rng = np.random.default_rng([seed, roi, patch])
    transform = from_origin(400000 + 1000 * patch, 5000000 + 10000 * roi, 10, 10)
    s1_size = s1_size or size
    arrays = {
        "s1": rng.uniform(-30, 2, size=(s1_bands, s1_size, s1_size)).astype(np.float32),
        "s2": rng.integers(1, 6000, size=(13, size, size)).astype(np.uint16),
        "s2_cloudy": rng.integers(1, 11000, size=(13, size, size)).astype(np.uint16),
    }
    triplet = release_triplet(root, season, roi, patch)
    for sensor, path in triplet.paths().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_geotiff(path, arrays[sensor], crs=s1_crs if sensor == "s1" else UTM32N, transform=transform)
    return triplet


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-triplet synthetic tree of 96x96 patches (splits by ROI: train, val, test, train, train)."""
    from dsen2cr.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 10, size=96, seed=3)
    return root


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``dsen2cr ARGS`` in a fresh Python process (the console entry point), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "dsen2cr.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(autouse=True, scope="session")
def private_compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests (and the CLI processes they start) keep compiled code and build records in a folder of their own,
    never in the user's ~/.cache/dsen2cr."""
    folder = tmp_path_factory.mktemp("dsen2cr-cache")
    os.environ["DSEN2CR_CACHE_DIR"] = str(folder)
    return folder
