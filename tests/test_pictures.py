"""The pictures: text wrapped rather than cut off, a small part's quicklook drawn larger with its legends whole."""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from dsen2cr.quicklook import Quicklook, colour_bar, outline_legend
from dsen2cr.visualize import RGB_BANDS, label, mask_colours, rgb_image, wrap_lines

CAPTION = "T33UUU_20170216T102101_L1C_10m.tif: model B=4, F=32 without SAR, variance per band; cloud/shadow mask: paper"


def _ink(strip: np.ndarray) -> int:
    """How much text a white strip holds: the darkness summed over its pixels."""
    return int((255 - strip.astype(np.int64)).sum())


def test_lines_are_wrapped_at_spaces_and_long_words_at_characters() -> None:
    assert wrap_lines("a bb ccc dddd", 6, len) == ["a bb", "ccc", "dddd"]
    assert wrap_lines("abcdefgh ij", 3, len) == ["abc", "def", "gh", "ij"]  # a file name wider than a line
    assert wrap_lines("", 5, len) == [""]
    lines = wrap_lines(CAPTION, 7, len)
    assert max(map(len, lines)) <= 7 and "".join(lines).replace(" ", "") == CAPTION.replace(" ", "")


def test_a_label_narrower_than_its_text_wraps_and_loses_none_of_it() -> None:
    """The caption of a 212 px part was written on one line and cut off at the image's edge; now every line
    fits: the text's ink is the ink of the caption on a strip wide enough for one line, and nothing touches the
    right edge."""
    whole = label(CAPTION, 2000)
    assert whole.shape == (16, 2000, 3)
    wrapped = label(CAPTION, 212)
    assert wrapped.shape[1] == 212 and wrapped.shape[0] >= 16 + 13 * 2  # three lines at least
    assert abs(_ink(wrapped) - _ink(whole)) <= 0.03 * _ink(whole)
    assert (wrapped[:, -2:] == 255).all()
    assert _ink(whole[:, :212]) < 0.5 * _ink(whole)  # what one line at 212 px kept


def test_a_small_parts_quicklook_is_drawn_larger_with_its_legends_whole() -> None:
    """A 30 x 20 px part: each pixel repeated 8 times (240 px for the longer side); the three panels, titles
    wrapped to them; the outline legend and sigma's colour bar do not fit beside each other, so each gets a row,
    whole (they were cut at the figure's width)."""
    rng = np.random.default_rng(1)
    before = rng.integers(1, 3000, size=(13, 30, 20)).astype(np.uint16)
    after = rng.integers(1, 3000, size=(13, 30, 20)).astype(np.uint16)
    mask = np.zeros((30, 20), np.int8)  # clear: no outlines drawn over the input
    sigma = rng.uniform(0, 500, size=(13, 30, 20)).astype(np.float32)

    quicklook = Quicklook(30, 20, caption=CAPTION)
    quicklook.add(Window(0, 0, 20, 30), before, after, mask, sigma)
    figure = _saved(quicklook)
    panel_height, panel_width = 240, 160
    assert figure.shape[1] == 3 * panel_width + 2 * 4
    top = float(np.percentile(sigma.astype(np.float64).mean(axis=0), 99))
    footer = figure[-36:]
    np.testing.assert_array_equal(footer[:18, :230], outline_legend())
    np.testing.assert_array_equal(footer[18:, :260], colour_bar(top))
    panels = figure[-36 - panel_height : -36]
    expected = rgb_image(before[RGB_BANDS].repeat(8, axis=1).repeat(8, axis=2))
    np.testing.assert_array_equal(panels[:, :panel_width], expected)
    expected = rgb_image(after[RGB_BANDS].repeat(8, axis=1).repeat(8, axis=2))
    np.testing.assert_array_equal(panels[:, panel_width + 4 : 2 * panel_width + 4], expected)
    text = figure[: -36 - panel_height]
    titles = text[label(CAPTION, figure.shape[1]).shape[0] :]
    assert (titles[:, panel_width - 2 : panel_width] == 255).all()  # no title runs into the next panel
    assert (text[:, -2:] == 255).all()
    assert _ink(text) >= 0.97 * sum(_ink(label(t, 2000)) for t in _texts(quicklook))


def test_a_large_scenes_quicklook_keeps_one_line_and_one_legend_row() -> None:
    """A scene wider than the legends: the titles on one line each and the legends side by side, as before."""
    quicklook = Quicklook(300, 420, caption="scene.tif")
    quicklook.mask = np.zeros((300, 420), np.int8)
    figure = _saved(quicklook)
    assert figure.shape == (16 + 16 + 300 + 18, 2 * 420 + 4, 3)
    np.testing.assert_array_equal(figure[-18:, :230], outline_legend())
    assert mask_colours(quicklook.mask).shape == (300, 420, 3)


def _saved(quicklook: Quicklook) -> np.ndarray:
    import tempfile
    from pathlib import Path

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        path = quicklook.save(Path(folder) / "q.png")
        return np.asarray(Image.open(path).convert("RGB"))


def _texts(quicklook: Quicklook) -> list[str]:
    titles = ["Input (cloud and shadow outlined)", f"Output: {quicklook.mode}", "Mean sigma over the bands (DN)"]
    return [quicklook.caption, *titles]


def test_the_colour_bar_keeps_one_line_whatever_sigmas_scale() -> None:
    """Sigma's 99th percentile of a poorly trained model can be huge: the colour bar's label stays one line (it
    wrapped onto a second and the preview failed), and a sigma map holding infinities still draws."""
    for top in (5.0, 695.0, 123456.0, 1e12):
        assert colour_bar(top).shape == (18, 260, 3)
    quicklook = Quicklook(20, 20)
    sigma = np.full((13, 20, 20), 1e12, np.float32)
    sigma[:, :5] = np.inf
    quicklook.add(Window(0, 0, 20, 20), *np.ones((2, 13, 20, 20), np.uint16), sigma_dn=sigma)
    figure = _saved(quicklook)
    assert figure.shape[1] == 3 * 240 + 2 * 4


def test_a_narrow_strips_panels_are_widened_with_white_for_their_titles() -> None:
    """A part 2 px wide and 300 px tall (drawn larger only up to 240 px on its longer side: not at all): each panel
    is its 2 px of image, then white up to 120 px, so its title wraps at words, not a character a line."""
    quicklook = Quicklook(300, 2)
    rng = np.random.default_rng(2)
    before = rng.integers(1, 3000, size=(13, 300, 2)).astype(np.uint16)
    quicklook.add(Window(0, 0, 2, 300), before, before)
    figure = _saved(quicklook)
    assert figure.shape[1] == 2 * 120 + 4
    panel = figure[-300:, :120]
    np.testing.assert_array_equal(panel[:, :2], rgb_image(before[RGB_BANDS]))
    assert (panel[:, 2:] == 255).all()
    assert figure.shape[0] - 300 <= 16 + 13 * 2  # "Output: every pixel predicted": at most three lines
