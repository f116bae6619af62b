"""The before/after quicklook of a scene (``remove-clouds --preview``): filled tile by tile as the windows pass,
then drawn with :mod:`dsen2cr.visualize`'s pieces: the input with the cloud/shadow map outlined, the output, and
with sigma a third panel and its colour bar."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dsen2cr.visualize import (
    FIGURE_PANEL,
    RGB_BANDS,
    figure_with_titles,
    label,
    mask_outline,
    rgb_image,
    save_png,
)

if TYPE_CHECKING:
    from rasterio.windows import Window


#: A quicklook's panels are at least this wide, white beside a narrower image, so that their titles wrap at words.
MIN_PANEL_WIDTH = 120


def widened(image: np.ndarray, width: int) -> np.ndarray:
    """A (H, W, 3) image with white added on its right up to ``width`` px (as it is when wide enough)."""
    extra = max(0, width - image.shape[1])
    return np.pad(image, ((0, 0), (0, extra), (0, 0)), constant_values=255) if extra else image


#: Colour of the cloud/shadow outline drawn on a quicklook's input panel (yellow).
OUTLINE_COLOUR = (255, 220, 0)


class Quicklook:
    """Before/after RGB quicklook filled tile by tile (every ``scale``-th pixel), so nothing is read twice: the
    input with the cloud/shadow map outlined (clouds and shadows in their own colours), the output titled with
    how it was made (``mode``), with sigma a third panel, and ``caption`` (scene, model, mask) above."""

    def __init__(
        self, height: int, width: int, max_size: int = 1024, mode: str = "every pixel predicted", caption: str = ""
    ) -> None:
        self.scale = max(1, math.ceil(max(height, width) / max_size))
        shape = (3, math.ceil(height / self.scale), math.ceil(width / self.scale))
        self.before = np.zeros(shape, np.uint16)
        self.after = np.zeros(shape, np.uint16)
        self.mode, self.caption = mode, caption  # how the output was made; the first line (scene, model, mask)
        self.mask: np.ndarray | None = None  # 1 cloud, -1 shadow, 0 clear
        self.sigma: np.ndarray | None = None  # mean sigma over the bands (DN); negative: no data
        self.text: dict[str, str] = {}  # what made it (the output COG's tags), written as PNG text

    def add(
        self,
        core: Window,
        before_dn: np.ndarray,
        after_dn: np.ndarray,
        mask: np.ndarray | None = None,
        sigma_dn: np.ndarray | None = None,
    ) -> None:
        """Place the sampled pixels of one tile core (13-band DN arrays, its (h, w) cloud/shadow map, and its
        per-band sigma in DN, negative where there is no data)."""
        s = self.scale
        r0, c0 = -core.row_off % s, -core.col_off % s  # first rows/columns on the sampling grid
        rows = slice((core.row_off + r0) // s, (core.row_off + r0) // s + len(range(r0, core.height, s)))
        cols = slice((core.col_off + c0) // s, (core.col_off + c0) // s + len(range(c0, core.width, s)))
        self.before[:, rows, cols] = before_dn[RGB_BANDS, r0::s, c0::s]
        self.after[:, rows, cols] = after_dn[RGB_BANDS, r0::s, c0::s]
        if mask is not None:
            if self.mask is None:
                self.mask = np.zeros(self.before.shape[1:], np.int8)
            self.mask[rows, cols] = mask[r0::s, c0::s]
        if sigma_dn is not None:
            if self.sigma is None:
                self.sigma = np.full(self.before.shape[1:], -1.0, np.float32)
            self.sigma[rows, cols] = sigma_dn[:, r0::s, c0::s].mean(axis=0)

    def save(self, path: str | Path) -> Path:
        """Write the titled panels as PNG: input (cloud and shadow outlined), output, and with sigma the mean
        sigma over the bands; below, the outline legend (and the colour bar of sigma). A part smaller than
        :data:`FIGURE_PANEL` px is drawn larger (each pixel repeated), so its titles and legends have room; a panel
        still narrower than :data:`MIN_PANEL_WIDTH` is widened with white (a strip of a few pixels)."""
        grow = max(1, -(-FIGURE_PANEL // max(self.before.shape[1:])))

        def larger(image: np.ndarray) -> np.ndarray:
            return image.repeat(grow, axis=-2).repeat(grow, axis=-1)

        before = rgb_image(larger(self.before))
        footer = [outline_legend()] if self.mask is not None else []
        if self.mask is not None:
            mask = larger(self.mask)
            before[mask_outline(mask == -1)] = SHADOW_OUTLINE
            before[mask_outline(mask == 1)] = OUTLINE_COLOUR  # drawn last: a cloud's edge wins
        panels = [before, rgb_image(larger(self.after))]
        titles = ["Input (cloud and shadow outlined)" if self.mask is not None else "Input", f"Output: {self.mode}"]
        if self.sigma is not None:
            valid = self.sigma[np.isfinite(self.sigma) & (self.sigma >= 0)]
            top = float(np.percentile(valid, 99)) if valid.size else 1.0
            panels.append(sigma_colours(larger(self.sigma), top))
            titles.append("Mean sigma over the bands (DN)")
            footer.append(colour_bar(top))
        figure = figure_with_titles([widened(panel, MIN_PANEL_WIDTH) for panel in panels], titles, footer=footer)
        if self.caption:
            figure = np.concatenate([label(self.caption, figure.shape[1], 16), figure], axis=0)
        return save_png(path, figure, self.text)


#: Colour of the shadow outline on a quicklook's input panel (cyan: visible on dark shadows).
SHADOW_OUTLINE = (0, 220, 255)


def outline_legend() -> np.ndarray:
    """A legend strip for the quicklook's outlines: cloud (yellow), shadow (cyan)."""
    from PIL import ImageDraw

    strip = Image.new("RGB", (230, 18), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (colour, name) in enumerate(((OUTLINE_COLOUR, "cloud outline"), (SHADOW_OUTLINE, "shadow outline"))):
        x = 4 + 115 * i
        draw.rectangle((x, 3, x + 12, 15), outline=colour, width=3)
        draw.text((x + 17, 3), name, fill=(0, 0, 0))
    return np.asarray(strip)


#: The colour ramp of sigma maps, low to high: dark blue, teal, yellow (perceptually ordered, like viridis).
SIGMA_RAMP = np.array([(40, 20, 90), (30, 130, 140), (120, 200, 90), (250, 230, 40)], np.float32)


def sigma_colours(sigma: np.ndarray, top: float) -> np.ndarray:
    """uint8 (h, w, 3) of a sigma map: 0 to ``top`` along :data:`SIGMA_RAMP` (higher values saturate), black
    where sigma is negative (no data)."""
    position = np.clip(sigma / max(top, 1e-9), 0, 1) * (len(SIGMA_RAMP) - 1)
    low = np.minimum(position.astype(int), len(SIGMA_RAMP) - 2)
    fraction = (position - low)[..., None]
    image = SIGMA_RAMP[low] * (1 - fraction) + SIGMA_RAMP[low + 1] * fraction
    image[sigma < 0] = 0
    return image.astype(np.uint8)


def colour_bar(top: float, width: int = 260) -> np.ndarray:
    """A legend strip for :func:`sigma_colours`: the ramp from 0 to ``top`` DN, labelled at both ends."""
    ramp = sigma_colours(np.tile(np.linspace(0, top, width - 120, dtype=np.float32), (12, 1)), top)
    strip = np.full((18, width, 3), 255, np.uint8)
    strip[3:15, 30 : 30 + ramp.shape[1]] = ramp
    strip[:, :28] = label("0", 28, 18)
    text = f"{top:.0f} DN" if top < 1e6 else f"{top:.1e} DN"  # one line: a poorly trained model's sigma is huge
    strip[:, 32 + ramp.shape[1] :] = label(text, width - 32 - ramp.shape[1], 18)[:18]
    return strip
