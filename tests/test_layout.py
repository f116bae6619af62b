"""Dataset layouts, file lists and exact ROI splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from dsen2cr.data.layout import (
    Triplet,
    normalise_roi,
    read_file_list,
    read_roi_list,
    scan_release,
    select_rois,
    select_split,
    write_file_list,
)
from dsen2cr.errors import DSen2CRError


@pytest.fixture
def prefix_tree(tmp_path: Path, write_release_triplet: Callable[..., Triplet]) -> Path:
    """ROIs 1, 10, 106 and 123 of one season: every one starts with '1'."""
    for roi in (1, 10, 106, 123):
        for patch in (0, 1):
            write_release_triplet(tmp_path, "ROIs1158_spring", roi, patch, size=16)
    write_release_triplet(tmp_path, "ROIs1868_summer", 1, 0, size=16)
    return tmp_path


def test_roi_split_matches_exactly_not_by_substring(prefix_tree: Path, tmp_path: Path) -> None:
    triplets, skipped = scan_release(prefix_tree)
    assert len(triplets) == 9 and not skipped
    roi_file = tmp_path / "test_rois.txt"
    roi_file.write_text("# test ROIs\nROIs1158_spring_s1/s1_1\n")
    chosen = select_rois(triplets, read_roi_list(roi_file))
    assert sorted(t.patch_id for t in chosen) == ["ROIs1158_spring_1_p0", "ROIs1158_spring_1_p1"]
    # the season is part of the ROI: summer ROI 1 is another place
    assert all(t.roi == "ROIs1158_spring/1" for t in chosen)
    # a naive substring test would have claimed s1_10, s1_106 and s1_123 too
    naive = [t for t in triplets if "s1_1" in str(t.s1.parent)]
    assert len(naive) == 9


@pytest.mark.parametrize(
    "text", ["ROIs1158_spring/1", "ROIs1158_spring_1", "ROIs1158_spring_s1/s1_1", " ROIs1158_spring/01 "]
)
def test_roi_id_forms(text: str) -> None:
    assert normalise_roi(text) == "ROIs1158_spring/1"


def test_bad_roi_line_names_file_and_line(tmp_path: Path) -> None:
    roi_file = tmp_path / "rois.txt"
    roi_file.write_text("ROIs1158_spring/1\nspring 1\n")
    with pytest.raises(DSen2CRError, match=r"rois.txt:2: 'spring 1' is not a ROI id"):
        read_roi_list(roi_file)


def test_flat_file_list_with_tabs_and_commas(tmp_path: Path) -> None:
    csv_path = tmp_path / "files.csv"
    csv_path.write_text(
        "1\ts1\ts2_cloudFree\ts2_cloudy\tROIs1158_spring_101_0.tif\n"
        "2, s1, s2_cloudFree, s2_cloudy, ROIs1158_spring_132_10.tif\n"
        "\n"
        "3,s1,s2_cloudFree,s2_cloudy,ROIs1158_spring_106_1.tif\n"
    )
    triplets = read_file_list(csv_path, tmp_path / "data")
    assert [t.split for t in triplets] == [1, 2, 3]
    first = triplets[0]
    assert first.s1 == tmp_path / "data" / "s1" / "ROIs1158_spring_101_0.tif"
    assert first.s2 == tmp_path / "data" / "s2_cloudFree" / "ROIs1158_spring_101_0.tif"
    assert first.s2_cloudy == tmp_path / "data" / "s2_cloudy" / "ROIs1158_spring_101_0.tif"
    assert first.roi == "ROIs1158_spring/101" and triplets[1].roi == "ROIs1158_spring/132"
    assert [t.patch_id for t in select_split(triplets, "val")] == ["ROIs1158_spring_132_p10"]


def test_release_file_list_round_trip(prefix_tree: Path, tmp_path: Path) -> None:
    triplets = [replace(t, split=1 + i % 3) for i, t in enumerate(scan_release(prefix_tree)[0])]
    csv_path = write_file_list(triplets, tmp_path / "list.csv", prefix_tree)
    first_line = csv_path.read_text().splitlines()[0].split("\t")
    assert first_line[1:4] == [
        "ROIs1158_spring_s1/s1_1",
        "ROIs1158_spring_s2/s2_1",
        "ROIs1158_spring_s2_cloudy/s2_cloudy_1",
    ]
    assert read_file_list(csv_path, prefix_tree) == triplets


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1\ts1\ts2\tROIs1158_spring_1_0.tif", r"files.csv:2: expected 5 fields .* got 4"),
        ("4\ts1\ts2\ts2_cloudy\tROIs1158_spring_1_0.tif", r"files.csv:2: split must be 1 \(train\), 2 \(val\) or 3"),
        ("1\ts1\ts2\ts2_cloudy\tpatch.tif", r"files.csv:2: 'patch.tif' is not a SEN12MS-CR patch file name"),
    ],
)
def test_malformed_file_list_lines(tmp_path: Path, line: str, message: str) -> None:
    csv_path = tmp_path / "files.csv"
    csv_path.write_text("1\ts1\ts2\ts2_cloudy\tROIs1158_spring_1_1.tif\n" + line + "\n")
    with pytest.raises(DSen2CRError, match=message):
        read_file_list(csv_path, tmp_path)


def test_empty_split_is_an_error_that_says_where_splits_come_from(tmp_path: Path) -> None:
    """A file list from ``data index`` without ROI lists puts every patch in train; training then stopped at
    'split val has no patches', leaving the user to guess why."""
    csv_path = tmp_path / "files.csv"
    csv_path.write_text("1\ts1\ts2\ts2_cloudy\tROIs1158_spring_1_1.tif\n" * 2)
    with pytest.raises(DSen2CRError) as raised:
        select_split(read_file_list(csv_path, tmp_path), "test", source=str(csv_path))
    assert str(raised.value) == (
        f"{csv_path}: split test has no patches (it holds train 2); data index puts the ROIs of --val-rois in val "
        "and those of --test-rois in test (the common split: dsen2cr data splits)"
    )


def test_roi_lists_take_complete_patches_and_say_which_they_leave_out(
    tmp_path: Path, write_release_triplet: Callable[..., Triplet], caplog: pytest.LogCaptureFixture
) -> None:
    """Training (data.val_rois, …) and evaluate --rois scan the tree themselves: a patch of a listed ROI that
    lacked a partner file was left out without a word (data index lists it). Now a warning counts them and
    names one; a list none of whose ROIs has a complete patch is refused."""
    from dsen2cr.data.layout import triplets_of_rois

    root = tmp_path / "data"
    write_release_triplet(root, "ROIs1158_spring", 1, 0)
    write_release_triplet(root, "ROIs1158_spring", 1, 1).s1.unlink()
    write_release_triplet(root, "ROIs1158_spring", 2, 0).s2.unlink()  # not listed: not spoken of
    rois = tmp_path / "rois.txt"
    rois.write_text("ROIs1158_spring/1\n")
    with caplog.at_level("WARNING"):
        assert [t.patch_id for t in triplets_of_rois(root, rois)] == ["ROIs1158_spring_1_p0"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{rois}: 1 patch of its ROIs lacks a partner file and is left out (e.g. "
        f"{root / 'ROIs1158_spring_s2' / 's2_1' / 'ROIs1158_spring_s2_1_p1.tif'}: missing partner file "
        f"{root / 'ROIs1158_spring_s1' / 's1_1' / 'ROIs1158_spring_s1_1_p1.tif'})"
    ]
    rois.write_text("ROIs1158_spring/2\n")
    with pytest.raises(DSen2CRError, match=r"rois.txt: none of its ROIs has a complete patch under .*data \(1 lacks"):
        triplets_of_rois(root, rois)


def test_data_files_name_the_lists_without_their_folders() -> None:
    """A run's record names the list files its splits come from, never the folders they lie in."""
    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import data_files

    assert data_files(DataSection(root="/d", file_list="/d/lists/files.csv")) == "files.csv"
    rois = DataSection(root="/d", train_rois="/x/train.txt", val_rois="/x/val.txt", test_rois="/x/test.txt")
    assert data_files(rois) == "train: train.txt, val: val.txt"
    assert data_files(DataSection()) == "the bundled sample's files.csv"
