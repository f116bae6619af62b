"""Every inference backend agrees with eager fp32 (accuracy only; speed is in benchmarks/)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dsen2cr import DSen2CR
from dsen2cr.backends import build_backend, relative_error, select_backend


@pytest.fixture(scope="module")
def tiny() -> DSen2CR:
    torch.manual_seed(0)
    return DSen2CR(num_blocks=2, num_features=16).eval()


def _inputs(batch: int = 2, h: int = 48, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (
        rng.uniform(0, 5, (batch, 13, h, w)).astype(np.float32),
        rng.uniform(0, 2, (batch, 2, h, w)).astype(np.float32),
    )


def _reference(model: DSen2CR, s2: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """The model evaluated in float64 (on a copy)."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(s2).double(), torch.from_numpy(s1).double()).numpy()


@pytest.mark.parametrize(("backend", "tolerance"), [("eager", 1e-5), ("compiled", 1e-3), ("bf16", 5e-2)])
def test_backend_agrees_with_fp32(tiny: DSen2CR, backend: str, tolerance: float) -> None:
    s2, s1 = _inputs()
    expected = _reference(tiny, s2, s1)
    predictor = build_backend(tiny, backend)
    error = relative_error(predictor(s2, s1), expected)
    print(f"{backend}: relative error {error:.2e}")
    assert error < tolerance


def test_auto_falls_back_to_eager_when_compiling_fails(
    tiny: DSen2CR, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    name, predictor = select_backend(tiny.float(), "auto", probe_shape=(1, 32, 32))
    assert "backend compiled unavailable" in caplog.text
    assert name == "eager"
    s2, s1 = _inputs(1, 32, 32)
    assert predictor(s2, s1).shape == (1, 13, 32, 32)


def test_probe_reference_is_the_centre_of_the_whole_output(tiny: DSen2CR) -> None:
    """The backend check runs eager only on a crop around the probe's centre; that crop's centre equals
    the centre of eager on the whole probe (the crop reaches the receptive-field radius beyond it)."""
    from dsen2cr.backends import _centre_reference

    s2, s1 = _inputs(1, 150, 130)
    eager = build_backend(tiny, "eager")
    centre, (rows, cols) = _centre_reference(tiny, eager, s2, s1, size=40)
    assert (rows, cols) == (slice(55, 95), slice(45, 85))
    np.testing.assert_allclose(centre, eager(s2, s1)[:, :, rows, cols], rtol=0, atol=1e-6)


def test_auto_drops_a_backend_that_disagrees_in_the_centre(
    tiny: DSen2CR, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import dsen2cr.backends as backends

    def wrong_backend(model: DSen2CR, name: str, device: object = "cpu") -> object:
        eager = backends._eager(model, torch.device("cpu"))

        def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
            out = eager(s2, s1)
            out[:, :, out.shape[2] // 2, out.shape[3] // 2] += 1.0  # one wrong pixel in the middle
            return out

        return predict

    monkeypatch.setattr(backends, "build_backend", wrong_backend)
    name, _ = select_backend(tiny, "auto", probe_shape=(1, 200, 180))
    assert "backend compiled disagrees with eager fp32" in caplog.text
    assert name == "eager"
