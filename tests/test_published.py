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
