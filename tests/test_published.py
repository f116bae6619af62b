"""``dsen2cr weights download`` against a server this test starts on 127.0.0.1 (never Google Drive): the
Keras file converted as convert-keras does, its source and SHA-256 in the metadata, nothing left behind."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from dsen2cr.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "keras"


def test_weights_download_converts_and_records_the_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("gdown", reason="the optional 'weights' extra is not installed")
    from safetensors import safe_open

    from dsen2cr.weights import load_model

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FIXTURES))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/keras224_full_sar.h5"
        out = tmp_path / "carl-sar.safetensors"
        argv = ["weights", "download", "carl-sar", "--out", str(out), "--url", url, "--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
    finally:
        httpd.shutdown()
    with safe_open(str(out), framework="pt") as file:
        metadata = file.metadata()
    source = (FIXTURES / "keras224_full_sar.h5").read_bytes()
    assert metadata["dsen2cr_source"] == url
    assert metadata["dsen2cr_source_sha256"] == hashlib.sha256(source).hexdigest()
    expected, got = load_model(FIXTURES / "keras224_full_sar.h5"), load_model(out)
    for (name, a), b in zip(expected.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carl-sar.safetensors"]  # no partial file left


def test_unknown_published_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["weights", "download", "best", "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "unknown published model 'best'; choose one of carl-sar, l1-sar, carl-nosar, l1-nosar" in (
        capsys.readouterr().err
    )


def _serve(folder: Path) -> http.server.ThreadingHTTPServer:
    """A local http server of ``folder`` (stopped by the caller)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_a_file_that_is_not_the_model_named_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``weights download carl-sar --url <a model without SAR>`` is refused (nothing written, no partial file
    left); a file that is not a Keras model is removed after the refusal, so a rerun downloads again instead of
    resuming it."""
    pytest.importorskip("gdown", reason="the optional 'weights' extra is not installed")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "page.h5").write_text("<html>quota exceeded</html>")
    httpd = _serve(FIXTURES)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/keras_weights_nosar.h5"
        out = tmp_path / "carl-sar.safetensors"
        assert main(["weights", "download", "carl-sar", "--out", str(out), "--url", url, "--no-progress"]) == 2
    finally:
        httpd.shutdown()
    assert "without SAR model, but carl-sar is B=16, F=256 with SAR (dsen2cr)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    httpd = _serve(tmp_path / "site")
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/page.h5"
        argv = ["weights", "download", "l1-sar", "--out", str(tmp_path / "w.safetensors"), "--url", url]
        for _ in range(2):
            assert main([*argv, "--no-progress"]) == 2
            err = capsys.readouterr().err
            assert "not an HDF5 file" in err and "the downloaded file was removed" in err, err
            assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    finally:
        httpd.shutdown()


def test_an_unreachable_server_gets_one_whole_line_with_the_alternatives(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Offline: one line naming the URL and what to do instead (--url, convert-keras), never cut mid-word;
    nothing left behind."""
    pytest.importorskip("gdown", reason="the optional 'weights' extra is not installed")
    url = "http://127.0.0.1:9/model.h5"  # the discard port: connection refused
    argv = ["weights", "download", "carl-sar", "--out", str(tmp_path / "w.safetensors"), "--url", url]
    assert main([*argv, "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and url in lines[0], lines
    assert "give a mirror with --url" in lines[0] and "dsen2cr convert-keras FILE OUT.safetensors" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_download_that_fills_the_disk_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A disk that fills during the download was "download of carl-sar failed ([Errno 28] No space left on
    device); rerun to resume, give a mirror with --url, …": a mirror does not help a full disk. Now one line
    naming the output, the disk's error and what was received, kept beside it for a rerun to resume."""
    import subprocess

    pytest.importorskip("gdown", reason="the optional 'weights' extra is not installed")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "big.h5").write_bytes(bytes(3_000_000))
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1024k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    httpd = _serve(tmp_path / "site")
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/big.h5"
        out = disk / "w.safetensors"
        assert main(["weights", "download", "carl-sar", "--out", str(out), "--url", url, "--no-progress"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{out}: cannot write the download (No space left on device)" in line, line
        assert "give a mirror" not in line and "a rerun resumes" in line, line
        (partial,) = list(disk.iterdir())  # gdown's own partial file, named after the one asked for
        kept = partial.stat().st_size
        assert kept > 500_000 and f"what was received ({kept / 1e6:.2f} MB) is kept beside it in {partial.name}" in line
    finally:
        httpd.shutdown()
        subprocess.run(["umount", str(disk)], check=True)
