"""Run configuration: every setting the original kept in the first lines of its script, as typed sections.

Loaded from YAML (a file, or a bundled config by name: ``paper``, ``small-cpu``) with ``section.key=value``
overrides; unknown keys (with the closest
known one suggested) and values of the wrong type are refused with one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD, MAX_SEED, bundled_config_names, bundled_config_path
from dsen2cr.cloud_detection import COMPUTED_MASKS
from dsen2cr.errors import DSen2CRError
from dsen2cr.losses import LIKELIHOODS
from dsen2cr.models import VARIANTS, ModelSpec, family_of

#: Upper bounds of sizes a config can ask for, so that a typo (``data.repeats=1e11``) is refused before memory
#: is reserved for it: crops beyond a Sentinel-2 tile, samples per patch and epoch, patches per batch.
MAX_CROP_SIZE = 10980
MAX_REPEATS = 10_000
MAX_BATCH_SIZE = 65_536


@dataclass
class ModelSection:
    """The network: a named variant, or explicit sizes (which override the variant's)."""

    variant: str = "dsen2cr"
    num_blocks: int | None = None
    num_features: int | None = None
    include_sar: bool | None = None
    res_scale: float | None = None
    uncertainty: str | None = None  # none | diag (a variance per band and pixel; trains with gnll or lnll)
    init_weights: str | None = None  # weights a new run starts from (fine-tuning): any file --weights takes but ONNX

    def model_config(self) -> ModelSpec:
        """The resolved network configuration, validated by its family."""
        if self.variant not in VARIANTS:
            raise DSen2CRError(f"model.variant: unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        base = VARIANTS[self.variant].config
        sizes = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("variant", "init_weights")}
        explicit = {k: v for k, v in sizes.items() if v is not None}
        return family_of(base).config_from_dict({**base.to_dict(), **explicit}, "model")


@dataclass
class LossSection:
    """The training loss (docs/design.md §3.5)."""

    name: str = "carl"  # carl | l1 | gnll | lnll (the last two: a model with uncertainty diag)
    lam: float = 1.0
    cloud_aware: bool = False  # gnll/lnll: CARL's weighting (clear pixels against the cloudy input, + lam x all)
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD
    mask: str = "paper"  # the cloud/shadow map CARL and the region metrics use: paper | s2cloudless


@dataclass
class DataSection:
    """Where the data is and how it is served."""

    root: str | None = None
    file_list: str | None = None  # DSen2-CR CSV; or the three ROI lists below with a release root
    train_rois: str | None = None
    val_rois: str | None = None
    test_rois: str | None = None  # read by export-onnx --int8 and the demo; training reads train and val
    crop_size: int = 128
    augment: bool = True
    repeats: int = 1  # training samples per patch and epoch (each with its own crop and augmentation)
    num_workers: int = 2
    original_crop_offsets: bool = False  # crop offsets 0 .. size - crop - 1, as the original draws them
    drop_last: bool = False  # drop the incomplete last training batch, as the original does


@dataclass
class OptimSection:
    """Optimiser and schedule (the paper's NAdam settings)."""

    lr: float = 7e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    global_batch: bool = False  # batch_size is the global batch, split over the ranks (the original's rule)
    momentum_decay: float = 0.004
    batch_size: int = 16
    epochs: int = 8


@dataclass
class TrainerSection:
    """Where the run goes and how it runs."""

    out_dir: str = "runs/dsen2cr"
    seed: int = 42
    accelerator: str = "auto"
    devices: str | int = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # or bf16-mixed
    matmul_precision: str = "high"  # torch.set_float32_matmul_precision: highest = full fp32, high = TF32 on GPUs
    gradient_clip_val: float | None = None
    deterministic: bool = False
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPUs and tensor-core GPUs
    log_every_n_steps: int = 10
    val_images: int = 4  # images in the TensorBoard grid at each validation
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0


@dataclass
class RunConfig:
    """A whole training run."""

    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (YAML-ready)."""
        return dataclasses.asdict(self)


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` if it matches ``annotation`` (ints are accepted for floats), else raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, where)
            except DSen2CRError:
                continue
        raise DSen2CRError(f"{where}: expected {_type_name(annotation)}, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
    elif origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, list):
            return [_check_type(v, item, where) for v in value]
    elif annotation is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
            number = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if number is not None:
            if not math.isfinite(number):
                raise DSen2CRError(f"{where}: expected a finite number, got {value!r}")
            return number
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, annotation):
        return value
    raise DSen2CRError(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def _type_name(annotation: Any) -> str:
    """Readable name of a type annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


#: Names other tools use for our keys, for better suggestions.
_ALIASES = {
    "learning_rate": "lr",
    "batch": "batch_size",
    "max_epochs": "epochs",
    "nb_epochs": "epochs",
    "crop": "crop_size",
    "workers": "num_workers",
    "output_dir": "out_dir",
    "gpus": "devices",
    "use_sar": "include_sar",
    "blocks": "num_blocks",
    "features": "num_features",
    "lambda": "lam",
}


def _unknown_key(key: str, known: list[str], where: str) -> DSen2CRError:
    """An error for an unknown key with the closest known one suggested."""
    close = [_ALIASES[key]] if _ALIASES.get(key) in known else difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return DSen2CRError(f"{where}: unknown key {key!r}{hint}")


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a validated ``RunConfig`` from a nested dict (missing keys keep their defaults)."""
    if not isinstance(data, dict):
        raise DSen2CRError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    config = RunConfig()
    sections = {f.name: f for f in dataclasses.fields(RunConfig)}
    for section_name, values in data.items():
        if section_name not in sections:
            raise _unknown_key(section_name, list(sections), source)
        section = getattr(config, section_name)
        hints = typing.get_type_hints(type(section))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise DSen2CRError(f"{source}: section {section_name!r} must be a mapping, got {values!r}")
        for key, value in values.items():
            where = f"{source}: {section_name}.{key}"
            if key not in hints:
                raise _unknown_key(key, list(hints), f"{source}: {section_name}")
            setattr(section, key, _check_type(value, hints[key], where))
    _validate(config, source)
    return config


def _validate(config: RunConfig, source: str) -> None:
    """Check the values that types alone do not."""
    config.model.model_config()
    if config.loss.mask not in COMPUTED_MASKS:
        raise DSen2CRError(
            f"{source}: loss.mask: expected one of {', '.join(COMPUTED_MASKS)} (product masks come with Sentinel "
            f"products, not with SEN12MS-CR patches), got {config.loss.mask!r}"
        )
    _validate_loss(config, source)
    t = config.trainer
    ranges: dict[str, tuple[float | int | None, float, float]] = {
        # key: (value, lowest, highest), both included; None values are not checked
        "data.crop_size": (config.data.crop_size, 1, MAX_CROP_SIZE),
        "data.repeats": (config.data.repeats, 1, MAX_REPEATS),
        "data.num_workers": (config.data.num_workers, 0, 256),
        "optim.batch_size": (config.optim.batch_size, 1, MAX_BATCH_SIZE),
        "optim.epochs": (config.optim.epochs, 1, 1_000_000),
        "optim.lr": (config.optim.lr, 1e-30, 10.0),
        "optim.eps": (config.optim.eps, 0.0, 1.0),
        "optim.momentum_decay": (config.optim.momentum_decay, 0.0, 1.0),
        "loss.lam": (config.loss.lam, 0.0, 1e6),
        "loss.cloud_threshold": (config.loss.cloud_threshold, 0.0, 1.0),
        "trainer.seed": (t.seed, 0, MAX_SEED),
        "trainer.num_nodes": (t.num_nodes, 1, 100_000),
        "trainer.devices": (t.devices if isinstance(t.devices, int) else None, 1, 100_000),
        "trainer.log_every_n_steps": (t.log_every_n_steps, 1, 10**9),
        "trainer.val_images": (t.val_images, 0, 64),
        "trainer.gradient_clip_val": (t.gradient_clip_val, 0.0, 1e12),
        "trainer.limit_train_batches": (t.limit_train_batches, 1e-9, 10**9),
        "trainer.limit_val_batches": (t.limit_val_batches, 1e-9, 10**9),
    }
    for key, (value, lowest, highest) in ranges.items():
        if value is not None and not lowest <= value <= highest:
            raise DSen2CRError(f"{source}: {key}: must be in [{_bound(lowest)}, {_bound(highest)}], got {value}")
    if t.matmul_precision not in ("highest", "high", "medium"):
        raise DSen2CRError(
            f"{source}: trainer.matmul_precision: expected highest, high or medium, got {t.matmul_precision!r}"
        )
    if len(config.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in config.optim.betas):
        raise DSen2CRError(f"{source}: optim.betas: expected two numbers in [0, 1), got {config.optim.betas}")


def _bound(value: float) -> str:
    """A range's bound as written: an integer in full (1000000, not 1e+06), a float in short (1e-30)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _validate_loss(config: RunConfig, source: str) -> None:
    """The loss must suit the model: a likelihood (gnll, lnll) for a model that predicts its variance, and
    only for such a model (carl and l1 would leave the variance untrained)."""
    name = config.loss.name
    if name not in ("carl", "l1", *LIKELIHOODS):
        raise DSen2CRError(f"{source}: loss.name: expected carl, l1, gnll or lnll, got {name!r}")
    uncertain = config.model.model_config().uncertainty != "none"
    if uncertain and name not in LIKELIHOODS:
        raise DSen2CRError(
            f"{source}: loss.name: {name} does not train the variance of model.uncertainty "
            f"{config.model.model_config().uncertainty}; use gnll or lnll"
        )
    if not uncertain and name in LIKELIHOODS:
        raise DSen2CRError(
            f"{source}: loss.name: {name} needs a model that predicts its variance: set model.uncertainty: diag"
        )
    if config.loss.cloud_aware and name not in LIKELIHOODS:
        raise DSen2CRError(f"{source}: loss.cloud_aware: for gnll and lnll (carl is cloud-aware already)")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``section.key=value`` overrides."""
    import yaml

    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = bundled_config_path(str(path)) or Path(path)
        source = str(path)
        if not path.is_file():
            names = bundled_config_names()
            close = difflib.get_close_matches(str(path), names, n=1)
            raise DSen2CRError(
                f"{path}: config file not found, nor a bundled config ({', '.join(names)})"
                + (f"; did you mean {close[0]}?" if close else "")
            )
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except yaml.YAMLError as error:
            raise DSen2CRError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
        except RecursionError:
            raise DSen2CRError(f"{path}: not a dsen2cr config (nested too deeply)") from None
        except UnicodeDecodeError:
            raise DSen2CRError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
        if not isinstance(data, dict):
            raise DSen2CRError(
                f"{path}: expected a mapping of sections (model, loss, data, optim, trainer), got {type(data).__name__}"
            )
    for override in overrides or []:
        key, sep, raw = override.partition("=")
        if not sep or "." not in key:
            raise DSen2CRError(f"override {override!r}: expected section.key=value")
        section, name = key.split(".", 1)
        if not isinstance(data.get(section), dict):
            data[section] = {}
        try:
            data[section][name] = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError):
            raise DSen2CRError(f"override {override!r}: the value is not valid YAML") from None
    if overrides:
        source = f"{source} + overrides"
    return config_from_dict(data, source)


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved configuration as YAML, atomically."""
    import yaml

    from dsen2cr.outputs.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return Path(path)
