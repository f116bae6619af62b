"""Sentinel-1 products as catalogues deliver them are refused as S1, saying what they are; files named after their
product (exports, an S1 pair split from one) are read as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import S1_GRD_NAME, split_s1, write_s1_product
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.pairing import pair_scenes
from dsen2cr.inputs.s1_products import refuse_s1_product

SLC_NAME = "S1B_IW_SLC__1SDV_20190312T170823_20190312T170850_015339_01CB8A_1F2E"


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (f"{S1_GRD_NAME}.SAFE", "a Sentinel-1 Level-1 GRD product"),
        (f"{S1_GRD_NAME}.SAFE.zip", "a Sentinel-1 Level-1 GRD product"),
        (f"{S1_GRD_NAME}.zip", "a Sentinel-1 Level-1 GRD product"),
        (f"{S1_GRD_NAME.replace('_IW_GRDH_', '_EW_GRDM_')}.SAFE", "a Sentinel-1 Level-1 GRD product"),
        (f"{SLC_NAME}.SAFE.zip", "a Sentinel-1 Level-1 SLC product (complex values in radar geometry)"),
        (f"{S1_GRD_NAME.replace('GRDH_1', 'RAW__0')}.SAFE", "Level-0 RAW product (unfocused signal data, no image)"),
        (f"{S1_GRD_NAME.replace('GRDH_1', 'OCN__2')}.zip", "Level-2 OCN product"),
        ("s1a-iw-grd-vh-20170216t051234-20170216t051259-015335-0191a9-002.tiff", "a measurement file of a Sentinel"),
        ("s1b-iw2-slc-vv-20190312t170824-20190312t170849-015339-01cb8a-005.tiff", "Level-1 SLC product"),
        ("s1a-ew-grd-hh-20170216t051234-20170216t051259-015335-0191a9-001.tiff", "Level-1 GRD product"),
    ],
)
def test_products_as_delivered_are_refused_saying_what_they_are(tmp_path: Path, name: str, said: str) -> None:
    """Each kind by its name (a folder, a zip, a measurement file), with what --s1 takes and how to make it: an SLC
    needs deburst and multilook, a RAW or OCN product is not the one to process."""
    with pytest.raises(DSen2CRError) as refusal:
        refuse_s1_product(str(tmp_path / name))
    message = str(refusal.value)
    assert f"{name}: " in message and said in message
    assert "--s1 takes VV and VH backscatter in dB on a map grid" in message
    assert ("TOPSAR-Deburst, Multilook" in message) == ("_SLC_" in name or "-slc-" in name)
    assert ("use the GRD product of the same acquisition" in message) == ("RAW" in name or "OCN" in name)


@pytest.mark.parametrize(
    "name",
    [
        f"{S1_GRD_NAME}.tif",  # Earth Engine names an export by its image's id
        f"{S1_GRD_NAME}_db.tif",
        f"{S1_GRD_NAME}_VV.tif",
        f"{S1_GRD_NAME}.SAFE.tif",
        "S1A_IW_20170216T051234_DVP_RTC10_G_gpuned_5C2F.zip.tif",  # ASF HyP3's RTC, not an ESA product name
        "s1a-iw-grd-vv.tif",
    ],
)
def test_files_named_after_their_product_are_not_refused(tmp_path: Path, name: str) -> None:
    """Only a folder, a zip or a measurement file is a product as delivered; an export keeps its product's name."""
    refuse_s1_product(str(tmp_path / name))


def test_a_renamed_product_folder_is_known_by_its_layout(tmp_path: Path) -> None:
    """A product folder renamed (no product name left) is still one: manifest.safe beside measurement/."""
    folder = write_s1_product(tmp_path).rename(tmp_path / "scene_s1")
    with pytest.raises(DSen2CRError, match="scene_s1: a Sentinel-1 product"):
        refuse_s1_product(str(folder))
    (tmp_path / "other").mkdir()
    refuse_s1_product(str(tmp_path / "other"))  # a folder is no product by itself: reading it says why it fails


def test_pair_refuses_a_product_and_takes_files_named_after_one(workdir: Path) -> None:
    """pair, in Python: a GRD product among the candidates is refused; S1 split into VV and VH files named after
    their product pair as before."""
    s2, s1 = workdir.scene()
    s2 = s2.rename(workdir / "T32TPT_20170216T101559_10m.tif")  # a scene sensed 5 h after the product
    with pytest.raises(DSen2CRError, match="SAFE: a Sentinel-1 Level-1 GRD product"):
        pair_scenes([str(s2)], [str(write_s1_product(workdir))])
    pair = split_s1(s1, f"{S1_GRD_NAME}_VV.tif", f"{S1_GRD_NAME}_VH.tif")
    (pairing,) = pair_scenes([str(s2)], [pair])
    assert pairing.s1 == pair and pairing.track == (15335 - 73) % 175 + 1 == 38
    assert pairing.cover == 1.0
