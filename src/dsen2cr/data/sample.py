"""The real sample data bundled with the package (see ``sample_data/NOTICE``)."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from dsen2cr.outputs.files import prepare_output_folder


def sample_root() -> Path:
    """Folder of the bundled sample data inside the installed package."""
    return Path(str(resources.files("dsen2cr") / "sample_data"))


def sample_dataset_root() -> Path:
    """Root of the bundled SEN12MS-CR-layout sample (6 BigEarthNet triplets with synthetic clouds)."""
    return sample_root() / "sen12mscr"


def sample_file_list() -> Path:
    """File list (DSen2-CR format) of the bundled SEN12MS-CR-layout sample: ROIs 1, 2, 4, 6 train, 5 val, 3 test."""
    return sample_dataset_root() / "files.csv"


def sample_scene() -> Path:
    """The bundled real, partly cloudy Sentinel-2 L1C scene (13 bands at 10 m, T33UUU, 2017-02-16)."""
    return sample_root() / "scene" / "T33UUU_20170216T102101_L1C_10m.tif"


#: What ``data sample`` writes into its folder (a rerun with ``--overwrite`` replaces exactly these).
SAMPLE_ENTRIES = ("NOTICE", "scene", "sen12mscr")


def copy_sample(out: str | Path, *, overwrite: bool = False) -> Path:
    """Copy the bundled sample data (and its NOTICE) to ``out``: a new or empty folder, or with ``overwrite``
    one that holds only an earlier copy."""
    out = prepare_output_folder(out, owned=SAMPLE_ENTRIES, overwrite=overwrite, what="the bundled sample")
    shutil.copytree(sample_root(), out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return out
