"""The choices and defaults that a run's settings (:mod:`dsen2cr.settings`) and the command line's options are
checked against, in a module that imports nothing heavy: ``dsen2cr --help`` builds every parser without torch,
rasterio or scipy (docs/design.md §1). Every module that needs one imports it from here. The bundled training
configs (``dsen2cr config NAME``, ``--config NAME``) are listed here too."""

from __future__ import annotations

from pathlib import Path

#: What ``--precision`` takes: ``auto`` (decided in :func:`dsen2cr.auto.resolve_precision`), IEEE ``fp32``,
#: ``tf32`` (float32 inputs, TF32 tensor-core products on GPUs that have them), ``fp16``, ``bf16``.
PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")

#: The lossless compressions a scene's COG can have, with the levels GDAL accepts for each (lower: faster and
#: larger). deflate is read by every GeoTIFF reader; zstd needs GDAL >= 2.3 or libtiff >= 4.0.10 to read.
COG_COMPRESSION_LEVELS: dict[str, range] = {"deflate": range(1, 10), "zstd": range(1, 23)}

#: The paper mask's cloud threshold on its score (``--cloud-threshold``; :mod:`dsen2cr.cloud_detection`).
DEFAULT_CLOUD_THRESHOLD = 0.2
#: ``data patches``: a target patch with more cloud than this share (the paper's detector) is left out.
DEFAULT_MAX_TARGET_CLOUD = 0.1

#: GDAL's block cache for a scene run, in bytes (rasterio passes an integer GDAL_CACHEMAX to GDAL as bytes: a
#: value in MB would be a cache of a few hundred bytes). GDAL's default, 5 % of RAM, holds written blocks and
#: makes memory grow with the scene on a large machine; a fixed cache keeps it flat while holding the blocks
#: that overlapping windows read twice and the rows that overviews are computed from. This is the default and
#: floor; a run sets its own (:func:`dsen2cr.rasters.set_block_cache_bytes`,
#: :func:`dsen2cr.auto.resolve_block_cache_bytes`: larger on a GPU).
GDAL_CACHE_BYTES = 256 * 2**20

#: The largest random seed (``trainer.seed``, ``data synth --seed``): numpy's generators and Lightning's
#: ``seed_everything`` take seeds in [0, 2**32 - 1] and fail, or pick another, outside them.
MAX_SEED = 2**32 - 1


def bundled_config_names() -> list[str]:
    """Names of the configs shipped with the package."""
    return sorted(p.stem for p in _bundled_dir().glob("*.yaml"))


def _bundled_dir() -> Path:
    """Folder of the bundled configs."""
    from importlib import resources

    return Path(str(resources.files("dsen2cr") / "configs"))


def bundled_config_path(name: str) -> Path | None:
    """Path of a bundled config (``paper``, ``small-cpu``), or None when ``name`` is not one."""
    if name in bundled_config_names():
        return _bundled_dir() / f"{name}.yaml"
    return None
