"""``remove-clouds --skip-existing``: a batch that stopped goes on where it stopped. A scene an earlier run finished
(every output there, its image recording these weights, the same inputs and settings) is skipped, its files left
untouched; one made otherwise is refused unless ``--overwrite``; a scene with some outputs only runs by the usual
rule; the ranks of a launch keep their share whatever was finished."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from dsen2cr.cli import main
from dsen2cr.models import create_model
from dsen2cr.weights import save_weights


def _manifest(workdir: Path, names: str, *, mask: bool = False) -> Path:
    """A manifest of the workdir's scene, one row per letter of ``names`` (outputs ``a.tif``, … and with ``mask``
    ``a_m.tif``, …)."""
    s2, s1 = workdir.scene()  # type: ignore[attr-defined]
    header = "s2,s1,out" + (",mask_out" if mask else "")
    rows = [f"{s2},{s1},{workdir / f'{n}.tif'}" + (f",{workdir / f'{n}_m.tif'}" if mask else "") for n in names]
    path = workdir / f"{names}.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _remove_clouds(workdir: Path, manifest: Path, *extra: str, weights: Path | None = None) -> int:
    weights = weights or workdir.weights()  # type: ignore[attr-defined]
    return main(["remove-clouds", "--weights", str(weights), "--manifest", str(manifest), "--no-progress", *extra])


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_a_stopped_batch_goes_on_where_it_stopped(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Row a finished before the batch stopped: the whole manifest with --skip-existing skips it (its two files
    byte for byte and modification time as they were) and writes b, with the pixels a holds (one scene, one
    model); a third run skips both and writes nothing."""
    assert _remove_clouds(workdir, _manifest(workdir, "a", mask=True)) == 0
    before = {name: _state(workdir / name) for name in ("a.tif", "a_m.tif")}
    capsys.readouterr()
    assert _remove_clouds(workdir, _manifest(workdir, "ab", mask=True), "--skip-existing") == 0
    printed = capsys.readouterr().out
    assert f"skipped {workdir / 'a.tif'}: an earlier run finished it (--skip-existing)" in printed
    assert f"wrote {workdir / 'b.tif'}" in printed and f"wrote {workdir / 'a.tif'}" not in printed
    assert {name: _state(workdir / name) for name in ("a.tif", "a_m.tif")} == before
    with rasterio.open(workdir / "a.tif") as a, rasterio.open(workdir / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert (workdir / "b_m.tif").is_file()
    assert _remove_clouds(workdir, _manifest(workdir, "ab", mask=True), "--skip-existing") == 0
    assert "wrote" not in capsys.readouterr().out


def test_a_scene_made_otherwise_is_refused_unless_overwrite(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """a.tif made by other weights, without --keep-clear, an S2 offset or --s1-linear: refused in one line naming what
    differs, the file unchanged; with --overwrite it is made again and records the new weights' SHA-256 (hashed
    here)."""
    manifest = _manifest(workdir, "a")
    assert _remove_clouds(workdir, manifest) == 0
    before = _state(workdir / "a.tif")
    torch.manual_seed(1)
    other = save_weights(create_model("dsen2cr-small"), workdir / "other.safetensors")
    capsys.readouterr()
    assert _remove_clouds(workdir, manifest, "--skip-existing", weights=other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{workdir / 'a.tif'}: exists, made with weights (SHA-256) " in err[0], err
    assert "pass --overwrite to replace it" in err[0]
    assert _remove_clouds(workdir, manifest, "--skip-existing", "--keep-clear") == 2
    assert "made with --keep-clear no (every pixel), this run's is yes, feather" in capsys.readouterr().err
    assert _remove_clouds(workdir, manifest, "--skip-existing", "--s2-offset", "-1000") == 2
    assert "made with S2 offset removed none, this run's is B1:-1000," in capsys.readouterr().err
    assert _remove_clouds(workdir, manifest, "--skip-existing", "--s1-linear") == 2
    assert "made with S1 read as dB, this run's is linear power, converted to dB" in capsys.readouterr().err
    assert _state(workdir / "a.tif") == before
    assert _remove_clouds(workdir, manifest, "--skip-existing", "--overwrite", weights=other) == 0
    with rasterio.open(workdir / "a.tif") as image:
        assert image.tags()["DSEN2CR_WEIGHTS_SHA256"] == hashlib.sha256(other.read_bytes()).hexdigest()


def test_a_scene_with_some_outputs_follows_the_usual_rule(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """a.tif is there but not the mask now asked for: not finished, so its image is refused without --overwrite
    (as without --skip-existing) and made again with it; an image that is no GeoTIFF is refused as such."""
    assert _remove_clouds(workdir, _manifest(workdir, "a")) == 0
    capsys.readouterr()
    assert _remove_clouds(workdir, _manifest(workdir, "a", mask=True), "--skip-existing") == 2
    assert f"{workdir / 'a.tif'}: exists; pass --overwrite" in capsys.readouterr().err
    assert _remove_clouds(workdir, _manifest(workdir, "a", mask=True), "--skip-existing", "--overwrite") == 0
    (workdir / "a.tif").write_text("not an image")
    assert _remove_clouds(workdir, _manifest(workdir, "a", mask=True), "--skip-existing") == 2
    assert "a.tif: exists, it cannot be read as a GeoTIFF" in capsys.readouterr().err
    assert (workdir / "a.tif").read_text() == "not an image"


def test_ranks_keep_their_share_whatever_was_finished(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 of 2 takes rows b and d of a, b, c, d (every second from the second). With b finished it writes d
    only: c stays rank 0's, as it was before anything was finished (a share that moved would run c twice)."""
    assert _remove_clouds(workdir, _manifest(workdir, "b")) == 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    capsys.readouterr()
    assert _remove_clouds(workdir, _manifest(workdir, "abcd"), "--skip-existing") == 0
    assert sorted(path.name for path in workdir.glob("?.tif")) == ["b.tif", "d.tif"]
    printed = capsys.readouterr().out
    assert "rank 1 of 2 takes 1 of the 4 scenes" in printed and f"skipped {workdir / 'b.tif'}" in printed


def test_a_rank_does_not_refuse_what_another_rank_already_wrote(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun every rank checks every row before its first scene, but the ranks start apart: a rank that
    starts late finds the outputs a faster rank already wrote. Rank 0 of 2 (rows a and c of a, b, c) with b.tif
    there, as rank 1 wrote it a moment before: rank 0 writes a and c, b.tif untouched (it is rank 1's to refuse)."""
    assert _remove_clouds(workdir, _manifest(workdir, "b")) == 0
    before = _state(workdir / "b.tif")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    capsys.readouterr()
    assert _remove_clouds(workdir, _manifest(workdir, "abc")) == 0, capsys.readouterr().err
    assert sorted(path.name for path in workdir.glob("?.tif")) == ["a.tif", "b.tif", "c.tif"]
    assert _state(workdir / "b.tif") == before


def test_an_ensemble_made_with_another_member_says_which_digest_differs(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """a.tif made by the ensemble of weights 0 and 1, the run's of 0 and 2: the refusal shows each member's
    digest shortened, so the one that differs is seen (it showed the first member's twice)."""
    manifest = _manifest(workdir, "a")
    members = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        members.append(save_weights(create_model("dsen2cr-small"), workdir / f"m{seed}.safetensors"))
    digests = [hashlib.sha256(member.read_bytes()).hexdigest()[:12] for member in members]
    run = ["remove-clouds", "--manifest", str(manifest), "--no-progress", "--weights"]
    assert main([*run, str(members[0]), str(members[1])]) == 0
    capsys.readouterr()
    assert main([*run, str(members[0]), str(members[2]), "--skip-existing"]) == 2
    err = capsys.readouterr().err
    made, wanted = f"{digests[0]}…; {digests[1]}…", f"{digests[0]}…; {digests[2]}…"
    assert f"made with weights (SHA-256) {made}, this run's is {wanted}" in err, err
