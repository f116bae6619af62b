"""Pictures (PNG) of S2, S1 and cloud/shadow maps, their titles, legends and layout (the pieces the scene's
quicklook, :mod:`dsen2cr.quicklook`, is drawn with), an evaluation's patch figures, with Pillow only (no plotting
stack), and its reliability diagram (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from dsen2cr.outputs.files import atomic_path
from dsen2cr.preprocessing import S1_CLIP_DB, S2_BANDS, s1_model_to_db, s2_model_to_dn

if TYPE_CHECKING:
    from collections.abc import Callable


#: Indices of B4, B3, B2 (red, green, blue) in the 13-band order.
RGB_BANDS = [S2_BANDS.index(b) for b in ("B4", "B3", "B2")]
#: Colours of the cloud/shadow map: cloud white, clear green-grey, shadow dark blue.
MASK_COLOURS = {1: (255, 255, 255), 0: (90, 120, 90), -1: (30, 30, 110)}


def s2_rgb(s2_dn: np.ndarray, *, max_reflectance: float = 0.3, brighten: float = 1.0) -> np.ndarray:
    """True-colour (B4, B3, B2) uint8 (H, W, 3) of a (13, H, W) DN image; reflectance ``max_reflectance``
    (divided by ``brighten``) maps to white."""
    return rgb_image(s2_dn[RGB_BANDS], max_reflectance=max_reflectance, brighten=brighten)


def rgb_image(rgb_dn: np.ndarray, *, max_reflectance: float = 0.3, brighten: float = 1.0) -> np.ndarray:
    """uint8 (H, W, 3) of a (3, H, W) red, green, blue DN array (see :func:`s2_rgb`)."""
    rgb = rgb_dn.astype(np.float32) / 10000.0
    scaled = np.clip(rgb * (255.0 * brighten / max_reflectance), 0, 255)
    return np.ascontiguousarray(scaled.transpose(1, 2, 0)).astype(np.uint8)


def s1_false_colour(s1_db: np.ndarray) -> np.ndarray:
    """False-colour uint8 (H, W, 3) of S1 (VV, VH in dB): R = VV, G = VH, B = VV - VH, each on its clip range."""
    (vv_lo, vv_hi), (vh_lo, vh_hi) = S1_CLIP_DB
    vv = np.clip((s1_db[0] - vv_lo) / (vv_hi - vv_lo), 0, 1)
    vh = np.clip((s1_db[1] - vh_lo) / (vh_hi - vh_lo), 0, 1)
    ratio = np.clip((s1_db[0] - s1_db[1]) / 15.0, 0, 1)
    return (np.stack([vv, vh, ratio], axis=-1) * 255).astype(np.uint8)


def mask_colours(mask: np.ndarray) -> np.ndarray:
    """Colour a cloud/shadow map (1 cloud, -1 shadow, 0 clear) as uint8 (H, W, 3)."""
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    for value, colour in MASK_COLOURS.items():
        out[mask == value] = colour
    return out


def side_by_side(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Join (H, W, 3) uint8 images of one height left to right with a white gap."""
    height = max(image.shape[0] for image in images)
    parts = []
    for index, image in enumerate(images):
        padded = np.full((height, image.shape[1], 3), 255, dtype=np.uint8)
        padded[: image.shape[0]] = image
        parts.append(padded)
        if index < len(images) - 1:
            parts.append(np.full((height, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


def save_png(path: str | Path, image: np.ndarray, text: dict[str, str] | None = None) -> Path:
    """Write a uint8 (H, W, 3) image as PNG atomically, with ``text`` (what made it: the tags of the rasters it
    shows) as its text chunks (iTXt: UTF-8, so file names of any script)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def training_grid(batch: dict, pred: torch.Tensor, max_images: int = 4) -> np.ndarray:
    """A uint8 (H, W, 3) grid, one row per image: SAR, cloudy, prediction, target, cloud/shadow map.

    ``batch`` holds model-unit tensors (``s1``, ``s2_cloudy``, ``s2``) and ``cloud_mask``.
    """
    rows = []
    for i in range(min(max_images, pred.shape[0])):
        s1_db = s1_model_to_db(batch["s1"][i].detach().cpu().numpy())
        panels = [s1_false_colour(s1_db)]
        panels += [s2_rgb(s2_model_to_dn(t[i])) for t in (batch["s2_cloudy"], pred, batch["s2"])]
        panels.append(mask_colours(batch["cloud_mask"][i].cpu().numpy()))
        rows.append(side_by_side(panels))
    return np.concatenate(rows, axis=0)


def label(text: str, width: int, height: int = 16) -> np.ndarray:
    """A white strip of ``width`` pixels with black text, wrapped onto as many lines as it takes (at spaces; a
    word wider than the strip at characters): ``height`` for one line, :data:`LINE_STEP` more for each further."""
    from PIL import ImageDraw

    lines = wrap_lines(text, width - 2 * TEXT_MARGIN, ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength)
    strip = Image.new("RGB", (width, height + LINE_STEP * (len(lines) - 1)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for number, line in enumerate(lines):
        draw.text((TEXT_MARGIN, TEXT_MARGIN + LINE_STEP * number), line, fill=(0, 0, 0))
    return np.asarray(strip)


#: Pixels between a strip's edge and its text, and from one line of text to the next (the default font's 12 px).
TEXT_MARGIN, LINE_STEP = 2, 13


def wrap_lines(text: str, width: float, length: Callable[[str], float]) -> list[str]:
    """``text`` in lines of at most ``width`` as ``length`` measures them: words joined while they fit, a word
    wider than a line split at characters (a file name: Pillow's own ``ImageText.Text.wrap`` refuses such a
    word); never fewer than one line."""
    lines: list[str] = []
    for word in text.split(" "):
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and length(joined) <= width:
            lines[-1] = joined
            continue
        lines.append("")
        for character in word:
            if lines[-1] and length(lines[-1] + character) > width:
                lines.append("")
            lines[-1] += character
    return lines or [""]


def mask_legend() -> np.ndarray:
    """A legend strip for the cloud/shadow colours: Cloud, Clear, Shadow."""
    from PIL import ImageDraw

    strip = Image.new("RGB", (260, 18), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (value, name) in enumerate(((1, "Cloud"), (0, "Clear"), (-1, "Shadow"))):
        x = 4 + 85 * i
        draw.rectangle((x, 3, x + 12, 15), fill=MASK_COLOURS[value], outline=(0, 0, 0))
        draw.text((x + 17, 3), name, fill=(0, 0, 0))
    return np.asarray(strip)


def figure_with_titles(
    panels: list[np.ndarray], titles: list[str], footer: np.ndarray | list[np.ndarray] | None = None
) -> np.ndarray:
    """Panels side by side, each with its title above (wrapped to its width; the panels kept level); below, the
    footer strips, left-aligned, side by side as far as the figure's width allows and the rest on further rows."""
    strips = [label(title, panel.shape[1]) for panel, title in zip(panels, titles, strict=True)]
    tallest = max(strip.shape[0] for strip in strips)
    strips = [np.pad(strip, ((0, tallest - strip.shape[0]), (0, 0), (0, 0)), constant_values=255) for strip in strips]
    figure = side_by_side([np.concatenate(pair, axis=0) for pair in zip(strips, panels, strict=True)])
    rows = footer_rows([footer] if isinstance(footer, np.ndarray) else footer or [], figure.shape[1])
    for strip in rows:
        row = np.full((strip.shape[0], figure.shape[1], 3), 255, dtype=np.uint8)
        width = min(strip.shape[1], figure.shape[1])
        row[:, :width] = strip[:, :width]
        figure = np.concatenate([figure, row], axis=0)
    return figure


def footer_rows(strips: list[np.ndarray], width: int, gap: int = 4) -> list[np.ndarray]:
    """Legend strips joined side by side (:func:`side_by_side`) into rows no wider than ``width`` where they
    fit; a strip wider than ``width`` on its own row."""
    rows: list[list[np.ndarray]] = []
    for strip in strips:
        if rows and sum(s.shape[1] + gap for s in rows[-1]) + strip.shape[1] <= width:
            rows[-1].append(strip)
        else:
            rows.append([strip])
    return [side_by_side(row, gap) for row in rows]


#: Figures' panels (an evaluation's patches, a quicklook of a small part) are drawn at least this large (SEN12MS-CR's
#: 256 px; the sample's 120 px doubled).
FIGURE_PANEL = 240


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a bool map: set pixels with an unset 4-neighbour (the image edge does not count)."""
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def reliability_diagram(
    path: str | Path,
    rms_sigma: np.ndarray,
    rms_error: np.ndarray,
    counts: np.ndarray,
    report: dict,
    text: dict[str, str] | None = None,
) -> Path | None:
    """A reliability diagram (PNG): RMS error against RMS sigma per bin of sigma, the diagonal of perfect
    calibration, the bins' share of values, and the pooled coverage, UCE and Spearman in the title; ``text``
    (what made it) as PNG text. Drawn with matplotlib (the ``train`` extra); without it, a warning and no file
    (None)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import logging

        logging.getLogger(__name__).warning(
            "warning: no reliability diagram (matplotlib is missing: pip install 'dsen2cr[train]')"
        )
        return None
    filled = counts > 0
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    top.plot(rms_sigma[filled], rms_error[filled], "o-", color="tab:blue", label="model (per bin of sigma)")
    limit = float(np.nanmax(np.concatenate([rms_sigma[filled], rms_error[filled]]))) * 1.05
    top.plot([0, limit], [0, limit], "--", color="grey", label="perfect calibration")
    top.set(ylabel="RMS |error| (reflectance)", xlim=(0, limit), ylim=(0, limit))
    top.legend(loc="upper left")
    top.set_title(reliability_title(report, (text or {}).get("DSEN2CR_LIKELIHOOD")), fontsize=9)
    bottom.bar(rms_sigma[filled], counts[filled] / counts.sum(), width=limit / 40, color="tab:grey")
    bottom.set(xlabel="RMS predicted σ (reflectance)", ylabel="share")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata=text)
    plt.close(figure)
    return Path(path)


def reliability_title(report: dict, likelihood: str | None) -> str:
    """The reliability diagram's title: the pooled coverage beside what calibrated sigma gives under the
    ``likelihood`` that trained it (``gnll (Gaussian)``, ``lnll (Laplace)``; both when unknown), UCE, Spearman."""
    expected = "0.683 for Gaussian errors, 0.757 for Laplace"
    if likelihood is not None and likelihood.startswith("gnll"):
        expected = "0.683 for Gaussian errors, as gnll assumes"
    elif likelihood is not None and likelihood.startswith("lnll"):
        expected = "0.757 for Laplace errors, as lnll assumes"
    return (
        f"Reliability: ±1σ coverage {report['coverage_1sigma']:.3f}\n(calibrated: {expected}),\nUCE "
        f"{report['uce']:.4f}, Spearman(σ, |error|) {report['spearman_sigma_abs_error']:.3f}, "
        f"{report['values']:,} values"
    )


def write_patch_previews(
    patch_id: str,
    s1_db: np.ndarray | None,
    images: dict[str, np.ndarray],
    mask: np.ndarray,
    caption: str,
    folder: Path,
    text: dict[str, str],
) -> None:
    """The original's per-image PNGs (the SAR panel for a model with SAR) plus one combined figure: titled
    panels at least :data:`FIGURE_PANEL` px wide, the patch id and its metrics above, the mask legend below;
    each with ``text`` (what made it) as PNG text."""
    panels = {"sar": s1_false_colour(s1_db)} if s1_db is not None else {}
    panels |= {
        "cloudy": s2_rgb(images["cloudy"]),
        "cloudy_bright": s2_rgb(images["cloudy"], brighten=2.5),
        "target": s2_rgb(images["target"]),
        "prediction": s2_rgb(images["prediction"]),
        "mask": mask_colours(mask),
    }
    image_dir = folder / patch_id
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, image in panels.items():
        save_png(image_dir / f"{name}.png", image, text)
    titles = {"sar": "SAR (VV, VH, ratio)", "cloudy": "Cloudy", "cloudy_bright": "Cloudy (brightened)"}
    titles |= {"target": "Target (cloud-free)", "prediction": "Prediction", "mask": "Cloud/shadow map"}
    scale = max(1, -(-FIGURE_PANEL // max(mask.shape)))  # nearest-neighbour upscaling of small patches
    large = [image.repeat(scale, axis=0).repeat(scale, axis=1) for image in panels.values()]
    figure = figure_with_titles(large, [titles[name] for name in panels], footer=mask_legend())
    header = label(caption, figure.shape[1], 18)
    save_png(folder / f"{patch_id}.png", np.concatenate([header, figure], axis=0), text)
