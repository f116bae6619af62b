"""Downloading published models (the registry's :attr:`~dsen2cr.models.ModelVariant.published` weights: for
DSen2-CR the original README's four Keras files on Google Drive): download with gdown (resumable), convert with
the family's Keras importer, write safetensors that record the source and its SHA-256."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.models import ModelSpec, ModelVariant, published_weights
from dsen2cr.outputs.files import check_output_file, describe_bytes, file_sha256, write_failure

log = logging.getLogger(__name__)


def download_published(
    name: str, out: str | Path, *, url: str | None = None, overwrite: bool = False, progress: bool = True
) -> Path:
    """Download published model ``name`` (or the Keras file at ``url``, e.g. a mirror), convert it, and write
    safetensors weights to ``out`` recording the source and the SHA-256 of the downloaded file. The Keras
    file is fetched to a hidden partial file beside ``out`` and resumed by a rerun; it is removed on success."""
    variant, published = published_weights(name)
    out = check_output_file(out, overwrite=overwrite, kind="safetensors")
    try:
        import gdown
    except ImportError:
        raise DSen2CRError(
            "weights download needs the optional 'weights' dependency: pip install 'dsen2cr[weights]'"
        ) from None
    source = url or published.url
    raw = out.with_name(f".{out.name}.{name}.h5.part")
    try:
        got = gdown.download(url=source, output=str(raw), quiet=not progress, resume=True, retries=3)
    except Exception as error:  # gdown raises its own and requests' types
        if (reason := write_failure(error, out.parent)) is not None:  # a full disk: no mirror helps
            partial = max(out.parent.glob(glob.escape(raw.name) + "*"), key=lambda p: p.stat().st_size, default=raw)
            kept = describe_bytes(partial.stat().st_size) if partial.is_file() else "nothing"  # gdown's own name
            raise DSen2CRError(
                f"{out}: cannot write the download ({reason}); what was received ({kept}) is kept beside it in "
                f"{partial.name}, which a rerun resumes once there is room"
            ) from None
        raise DSen2CRError(f"{source}: download of {name} failed ({_shortened(error)}); {_ALTERNATIVES}") from None
    if not got or not raw.is_file():
        raise DSen2CRError(f"{source}: download of {name} failed (nothing received); {_ALTERNATIVES}")
    digest = file_sha256(raw) or "unknown"
    try:
        config, state = _checked_keras(raw, name, variant)
    except DSen2CRError as error:  # not what the name promises: a rerun must download again, not resume it
        raw.unlink(missing_ok=True)
        raise DSen2CRError(f"{source}: {error}; the downloaded file was removed") from None
    from dsen2cr.weights import made_by, save_weights  # (lazy: safetensors only when writing)

    model = config.build()
    model.load_state_dict(state)
    save_weights(model, out, provenance=made_by(source, digest))
    raw.unlink()
    log.info("%s: SHA-256 %s", source, digest)
    return out


#: What a user can do when a download fails.
_ALTERNATIVES = (
    "rerun to resume, give a mirror with --url, or fetch the Keras file by hand and convert it with dsen2cr "
    "convert-keras FILE OUT.safetensors"
)


def _shortened(error: BaseException, limit: int = 200) -> str:
    """The error's message on one line, at most ``limit`` characters, cut at a word (marked with ...)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _checked_keras(raw: Path, name: str, variant: ModelVariant) -> tuple[ModelSpec, dict]:
    """The configuration and state of a downloaded Keras file, refused when it does not take the inputs the
    published model ``name`` takes (with or without SAR); a size other than the published one is warned (a
    mirror of a retrained model, or a test file)."""
    from dsen2cr.keras import load_keras_weights
    from dsen2cr.weights import check_state

    config, state = load_keras_weights(raw)
    check_state(config, state, raw)
    if config.include_sar != variant.config.include_sar:
        raise DSen2CRError(
            f"holds a {config.describe()} model, but {name} is {variant.config.describe()} ({variant.name})"
        )
    if config != variant.config:
        log.warning(
            "%s: holds a %s model; the published %s is %s", name, config.describe(), name, variant.config.describe()
        )
    return config, state
