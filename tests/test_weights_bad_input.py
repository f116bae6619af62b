"""Bad input to export, convert-keras, export-onnx, weights download and calibrate-sigma, table-driven through
the console entry point (the ``check_case`` fixture):
each row is an unusual but plausible input; the command exits with the expected status and one line on
stderr naming the file or option and the problem, no traceback, inputs unchanged, nothing left behind."""

from __future__ import annotations

import json
import shutil
import signal
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from rasterio.crs import CRS

from dsen2cr import create_model
from dsen2cr.weights import CONFIG_KEY

UTM32N = CRS.from_epsg(32632)

FIXTURES = Path(__file__).parent / "fixtures" / "keras"


def _truncate(path: Path, keep: float = 0.4) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


class Payload:
    """Pickles to a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_checkpoint(tmp: Path) -> list[str]:
    path = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(tmp / "pwned")}, path)
    return ["export", str(path), str(tmp / "out.safetensors")]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _copy(source: Path, tmp: Path) -> Path:
    return Path(shutil.copy(source, tmp / source.name))


def _plain_h5(tmp: Path) -> Path:
    import h5py

    with h5py.File(tmp / "plain.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    return tmp / "plain.h5"


def _remove_args(
    tmp: Path, *extra: str, s1: bool = False, weights: Path | None = None, also: Path | None = None
) -> list[str]:
    """remove-clouds over the small test scene (without SAR unless ``s1``); ``also``: a second weights file."""
    s2, s1_path = tmp.scene()
    variant = "dsen2cr-small" if s1 else "dsen2cr-small-nosar"
    named = [str(weights or tmp.weights(variant)), *([str(also)] if also else [])]
    args = ["remove-clouds", "--weights", *named, "--s2", str(s2), "--no-progress"]
    return args + (["--s1", str(s1_path)] if s1 else []) + list(extra)


def _existing(tmp: Path, name: str, content: bytes = b"keep me") -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def _weights_with_metadata(tmp: Path, **config: object) -> Path:
    """Small weights whose stored configuration is replaced by ``config`` (tensors unchanged)."""
    from safetensors.torch import save_file

    model = create_model("dsen2cr-small-nosar")
    stored = {**model.config.to_dict(), **config}
    path = tmp / "meta.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(path),
        metadata={"format": "dsen2cr-weights-v1", CONFIG_KEY: json.dumps(stored)},
    )
    return path


def _nan_keras(tmp: Path) -> Path:
    path = tmp / "nan.h5"
    with h5py.File(path, "w") as f:
        names = [b"conv2d_1", b"conv2d_2"]
        f.attrs["layer_names"] = names
        for index, (cin, cout) in enumerate([(13, 8), (8, 13)], start=1):
            group = f.create_group(f"conv2d_{index}")
            group.attrs["weight_names"] = [f"conv2d_{index}/kernel:0".encode(), f"conv2d_{index}/bias:0".encode()]
            kernel = np.zeros((3, 3, cin, cout), np.float32)
            kernel[0, 0, 0, 0] = np.nan
            group.create_dataset(f"conv2d_{index}/kernel:0", data=kernel)
            group.create_dataset(f"conv2d_{index}/bias:0", data=np.zeros(cout, np.float32))
    return path


def _huge_keras(tmp: Path) -> Path:
    """A tiny file declaring a (3, 3, 13, 1e8) kernel (nothing stored: HDF5 fill value)."""
    path = tmp / "huge.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv2d_1"]
        group = f.create_group("conv2d_1")
        group.attrs["weight_names"] = [b"conv2d_1/kernel:0", b"conv2d_1/bias:0"]
        group.create_dataset("conv2d_1/kernel:0", shape=(3, 3, 13, 10**8), dtype="f4", chunks=(3, 3, 13, 1000))
        group.create_dataset("conv2d_1/bias:0", data=np.zeros(8, np.float32))
    return path


def _inflating_checkpoint(tmp: Path) -> Path:
    path = tmp / "bomb.ckpt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (200 * 2**20))
    return path


def _ckpt(tmp: Path, state_dict: object) -> Path:
    path = tmp / "odd.ckpt"
    torch.save({"state_dict": state_dict, CONFIG_KEY: create_model("dsen2cr-small").config.to_dict()}, path)
    return path


#: The table: each row is run by ``test_bad_input`` through the ``check_case`` fixture.
CASES = [
    dict(
        name="convert-keras: not HDF5",
        setup=lambda t: ["convert-keras", str(_write(t / "m.h5", "text")), str(t / "o.safetensors")],
        message="m.h5: not an HDF5 file",
        absent=("o.safetensors",),
    ),
    dict(
        name="convert-keras: HDF5 but not a model",
        setup=lambda t: ["convert-keras", str(_plain_h5(t)), str(t / "o.safetensors")],
        message="plain.h5: HDF5 file is not a Keras model",
        absent=("o.safetensors",),
    ),
    dict(
        name="convert-keras: truncated",
        setup=lambda t: [
            "convert-keras",
            str(_truncate(_copy(FIXTURES / "keras224_full_sar.h5", t))),
            str(t / "o.safetensors"),
        ],
        message="keras224_full_sar.h5:",
        absent=("o.safetensors",),
    ),
    dict(
        name="export: pickle payload",
        setup=_pickle_checkpoint,
        message="evil.ckpt: refused to load",
        absent=("out.safetensors",),
    ),
    dict(
        name="export: missing checkpoint",
        setup=lambda t: ["export", str(t / "none.ckpt"), str(t / "o.safetensors")],
        message="none.ckpt: weights file not found",
        absent=("o.safetensors",),
    ),
    dict(
        name="export-onnx: no calibration patches",
        setup=lambda t: [
            "export-onnx",
            "--weights",
            str(t.weights()),
            "--int8",
            "--calibration-patches",
            "0",
            str(t / "q.onnx"),
        ],
        message="--calibration-patches: must be in [1, 4096], got 0",
        absent=("q.onnx",),
    ),
    dict(
        name="export-onnx: calibration list without root",
        setup=lambda t: [
            "export-onnx",
            "--weights",
            str(t.weights()),
            "--int8",
            "--calibration-list",
            "f.csv",
            str(t / "q.onnx"),
        ],
        message="--calibration-root: needed with --calibration-list",
        absent=("q.onnx",),
    ),
    dict(
        name="export: output is the checkpoint",
        setup=lambda t: ["export", str(_existing(t, "w.ckpt")), str(t / "w.ckpt"), "--overwrite"],
        message="would replace input source",
        keep=("w.ckpt",),
    ),
    dict(
        name="convert-keras: output is the input",
        setup=lambda t: ["convert-keras", str(_existing(t, "k.h5")), str(t / "k.h5"), "--overwrite"],
        message="would replace input source",
        keep=("k.h5",),
    ),
    dict(
        name="export-onnx: output is the weights",
        setup=lambda t: [
            "export-onnx",
            "--weights",
            str(t.weights()),
            str(t / "dsen2cr-small.safetensors"),
            "--overwrite",
        ],
        message="would replace input weights",
        keep=("dsen2cr-small.safetensors",),
    ),
    dict(
        name="convert-keras: a NaN kernel",
        setup=lambda t: ["convert-keras", str(_nan_keras(t)), str(t / "k.safetensors")],
        message="holds NaN or infinite values",
        absent=("k.safetensors",),
    ),
    dict(
        name="weights: res_scale NaN in metadata",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, res_scale=float("nan"))
        ),
        message="res_scale must be a finite number",
    ),
    dict(
        name="weights declaring a million blocks",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, num_blocks=1_000_000)
        ),
        message="num_blocks must be in [0, 256]",
    ),
    dict(
        name="convert-keras: a (3, 3, 13, 1e8) kernel",
        setup=lambda t: ["convert-keras", str(_huge_keras(t)), str(t / "k.safetensors")],
        message="shape (3, 3, 13, 100000000)",
        absent=("k.safetensors",),
    ),
    dict(
        name="export: a checkpoint that inflates 200x",
        setup=lambda t: ["export", str(_inflating_checkpoint(t)), str(t / "w.safetensors")],
        message="would inflate",
        absent=("w.safetensors",),
    ),
    dict(
        name="export-onnx: --calibration-patches 1e9",
        setup=lambda t: [
            "export-onnx",
            "--weights",
            str(t.weights()),
            "--int8",
            "--calibration-patches",
            "1000000000",
            str(t / "q.onnx"),
        ],
        message="must be in [1, 4096]",
        absent=("q.onnx",),
    ),
    dict(
        name='weights: num_blocks "4" in metadata',
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, num_blocks="4")),
        message="num_blocks must be an integer, got '4'",
    ),
    dict(
        name="weights: num_features 32.0 in metadata",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, num_features=32.0)
        ),
        message="num_features must be an integer, got 32.0",
    ),
    dict(
        name="export: a .ckpt whose state_dict is a list",
        setup=lambda t: ["export", str(_ckpt(t, [1, 2])), str(t / "w.safetensors")],
        message="state_dict is a list",
        absent=("w.safetensors",),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)


@pytest.mark.slow
def test_sigterm_during_int8_export_leaves_nothing(
    workdir: Path, terminate_when: Callable[..., int], private_tmp_env: dict[str, str]
) -> None:
    pytest.importorskip("onnxruntime")
    env = private_tmp_env
    weights = workdir.weights("dsen2cr-small")
    command = [
        "export-onnx",
        "--weights",
        str(weights),
        "--int8",
        "--calibration-patches",
        "4000",
        str(workdir / "q.onnx"),
    ]
    private = Path(env["TMPDIR"])
    status = terminate_when(command, lambda: any(private.glob("dsen2cr-int8-*")), env)
    assert status == 128 + signal.SIGTERM
    assert not list(private.glob("dsen2cr-*")) and not (workdir / "q.onnx").exists()  # (other libraries' caches stay)
    assert not list(workdir.glob(".q.*"))


# ------------------------------------------------------- round 3 (issue #26): files recognised by content


def _checkpoint(tmp: Path, name: str = "mycopy.ckpt") -> Path:
    """A training checkpoint as dsen2cr train writes it (state dict under ``model.``, the configuration)."""
    model = create_model("dsen2cr-small")
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, CONFIG_KEY: model.config.to_dict()}, tmp / name)
    return tmp / name


def _plain_state_dict(tmp: Path) -> Path:
    torch.save(create_model("dsen2cr-small").state_dict(), tmp / "m.pth")
    return tmp / "m.pth"


CASES += [
    dict(
        name="export: swapped arguments, a checkpoint as the output, --overwrite",
        setup=lambda t: ["export", str(t.weights()), str(_checkpoint(t)), "--overwrite"],
        message="mycopy.ckpt: this command writes a safetensors weights file; name it *.safetensors",
        keep=("mycopy.ckpt",),
    ),
    dict(
        name="export: an output named .safetensors that holds a checkpoint, --overwrite",
        setup=lambda t: ["export", str(t.weights()), str(_checkpoint(t, "copy.safetensors")), "--overwrite"],
        message="copy.safetensors: holds a PyTorch checkpoint (torch.save), not a safetensors weights file",
        keep=("copy.safetensors",),
    ),
    dict(
        name="export-onnx: an output not named .onnx",
        setup=lambda t: ["export-onnx", "--weights", str(t.weights()), str(t / "model.bin")],
        message="model.bin: this command writes an ONNX model; name it *.onnx",
        absent=("model.bin",),
    ),
    dict(
        name="export: a plain PyTorch state dict (.pth) as weights",
        setup=lambda t: ["export", str(_plain_state_dict(t)), str(t / "o.safetensors")],
        message="m.pth: not a dsen2cr training checkpoint (no state_dict)",
        absent=("o.safetensors",),
    ),
    dict(
        name="export: a text file as weights",
        setup=lambda t: ["export", str(_write(t / "w.bin", "hello")), str(t / "o.safetensors")],
        message="w.bin: holds a text file, not weights dsen2cr reads",
        absent=("o.safetensors",),
    ),
]


def test_weights_are_read_by_content_not_by_name(workdir: Path) -> None:
    """A safetensors file named .ckpt and a training checkpoint named .safetensors load as what they hold."""
    import shutil

    from dsen2cr.weights import load_model

    expected = load_model(workdir.weights())
    shutil.copy(workdir.weights(), workdir / "named-wrong.ckpt")
    checkpoint = _checkpoint(workdir, "checkpoint.safetensors")
    for path in (workdir / "named-wrong.ckpt", checkpoint):
        got = load_model(path)
        assert got.config == expected.config
    torch.testing.assert_close(load_model(workdir / "named-wrong.ckpt").state_dict(), expected.state_dict())


def _sigma_weights(
    tmp: Path, name: str = "sigma.safetensors", scale: object = None, diag: bool = True, **stored_too: object
) -> Path:
    """Small weights with a variance head (``diag``), with a stored sigma scale ``scale`` (and the record's other
    entries ``stored_too``: ``intervals``, ``region``) when given."""
    from dsen2cr.models.dsen2cr import ModelConfig
    from dsen2cr.weights import SIGMA_SCALE_KEY, save_weights

    model = ModelConfig(1, 4, False, 0.1, "diag" if diag else "none").build()
    stored = {"scale": scale} | stored_too
    record = {SIGMA_SCALE_KEY: json.dumps(stored)} if scale is not None else None
    return save_weights(model, tmp / name, provenance=record)


def _calibrate(tmp: Path, *weights: Path | str, extra: tuple[str, ...] = (), out: str = "c.safetensors") -> list[str]:
    """weights calibrate-sigma of ``weights`` on the small release tree's val split."""
    root = tmp.tree()
    data = ["--data-root", str(root), "--file-list", str(root / "files.csv"), "--no-progress"]
    return ["weights", "calibrate-sigma", "--weights", *map(str, weights), "--out", str(tmp / out), *data, *extra]


def _onnx_of(tmp: Path) -> Path:
    from dsen2cr.onnx_export import export_onnx
    from dsen2cr.weights import load_model

    return export_onnx(load_model(_sigma_weights(tmp)), tmp / "sigma.onnx")


def _onnx_with_record(tmp: Path, stored: dict) -> Path:
    """The small sigma model's ONNX export whose metadata holds the sigma calibration ``stored`` (written into the
    file afterwards: a calibrated file's export holds one, carried from its weights)."""
    import onnx

    from dsen2cr.weights import SIGMA_SCALE_KEY

    path = _onnx_of(tmp)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = SIGMA_SCALE_KEY, json.dumps(stored)
    onnx.save(proto, str(path))
    return path


CASES += [
    dict(
        name="calibrate-sigma: weights of a model without sigma",
        setup=lambda t: _calibrate(t, t.weights("dsen2cr-small-nosar")),
        message="dsen2cr-small-nosar.safetensors: predicts no sigma (model.uncertainty: none); nothing to calibrate",
        absent=("c.safetensors",),
    ),
    dict(
        name="calibrate-sigma: several weights (an ensemble) into a safetensors file",
        setup=lambda t: _calibrate(t, _sigma_weights(t), _sigma_weights(t, "other.safetensors")),
        message="c.safetensors: an ensemble's factors go into an ensemble file that names its members: --out NAME.json",
        absent=("c.safetensors",),
    ),
    dict(
        name="calibrate-sigma: one model into an ensemble file",
        setup=lambda t: _calibrate(t, _sigma_weights(t), out="c.json"),
        message="c.json: one model's factors go into its weights: --out NAME.safetensors",
        absent=("c.json",),
    ),
    dict(
        name="calibrate-sigma: an ONNX file",
        setup=lambda t: _calibrate(t, _onnx_of(t)),
        message="sigma.onnx: an ONNX file's graph cannot take a sigma scale; calibrate the weights it was exported",
        absent=("c.safetensors",),
    ),
    dict(
        name="calibrate-sigma: --out is the input weights",
        setup=lambda t: _calibrate(t, _sigma_weights(t), out="sigma.safetensors"),
        message="sigma.safetensors: output weights would replace input weights",
        keep=("sigma.safetensors",),
    ),
    dict(
        name="calibrate-sigma: --out exists",
        setup=lambda t: _calibrate(t, _sigma_weights(t), out=_existing(t, "c.safetensors").name),
        message="c.safetensors: exists; pass --overwrite to replace it",
        keep=("c.safetensors",),
    ),
    dict(
        name="calibrate-sigma: --split train (the model's own patches)",
        setup=lambda t: _calibrate(t, _sigma_weights(t), extra=("--split", "train")),
        message="argument --split: invalid choice: 'train'",
        absent=("c.safetensors",),
    ),
    dict(
        name="weights whose stored sigma scale has 12 factors",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_sigma_weights(t, scale=[1.0] * 12)),
        message="sigma.safetensors: stored sigma scale must hold 13 finite positive factors (one per S2 band)",
        absent=("o.tif",),
    ),
    dict(
        name="weights whose stored sigma scale holds a zero",
        setup=lambda t: _calibrate(t, _sigma_weights(t, scale=[1.0] * 12 + [0])),
        message="sigma.safetensors: stored sigma scale must hold 13 finite positive factors",
        absent=("c.safetensors",),
    ),
    dict(
        name="a sigma scale in weights of a model without sigma",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_sigma_weights(t, scale=[1.0] * 13, diag=False)
        ),
        message="sigma.safetensors: holds a sigma scale, but its model predicts no sigma",
        absent=("o.tif",),
    ),
    dict(
        name="weights info --json of an ONNX file whose stored sigma intervals hold 12 multiples",
        setup=lambda t: [
            "weights",
            "info",
            "--json",
            str(_onnx_with_record(t, {"scale": [1.0] * 13, "intervals": {"0.9": [1.5] * 12}})),
        ],
        message="sigma.onnx: stored sigma intervals must map shares of values between 0 and 1 to 13 finite positive",
    ),
    dict(
        name="calibrate-sigma: --cloud-threshold without --region cloudy (every value is fitted)",
        setup=lambda t: _calibrate(t, _sigma_weights(t), extra=("--cloud-threshold", "0.4")),
        message="--cloud-threshold: the paper mask's threshold of --region cloudy; without it every value is fitted",
        absent=("c.safetensors",),
    ),
    dict(
        name="weights whose stored sigma cloud threshold is above 1",
        setup=lambda t: _remove_args(
            t,
            "--out",
            str(t / "o.tif"),
            weights=_sigma_weights(t, scale=[1.0] * 13, region="cloudy", cloud_threshold=1.5),
        ),
        message="sigma.safetensors: stored sigma cloud threshold must be a number in (0, 1] (the paper mask's), got "
        "1.5",
        absent=("o.tif",),
    ),
    dict(
        name="weights whose stored sigma region is neither all nor cloudy",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_sigma_weights(t, scale=[1.0] * 13, region="clear")
        ),
        message="sigma.safetensors: stored sigma region must be all or cloudy (the values fitted on), got clear",
        absent=("o.tif",),
    ),
    dict(
        name="weights whose stored sigma patches on training ground is not a count",
        setup=lambda t: _remove_args(
            t,
            "--out",
            str(t / "o.tif"),
            weights=_sigma_weights(t, scale=[1.0] * 13, patches=2, patches_on_training_ground=-1),
        ),
        message="sigma.safetensors: stored sigma patches on training ground must be a count (0 or more), got -1",
        absent=("o.tif",),
    ),
    dict(
        name="weights whose stored sigma intervals name a share above 1",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_sigma_weights(t, scale=[1.0] * 13, intervals={"1.5": [2.0] * 13})
        ),
        message="sigma.safetensors: stored sigma intervals must map shares of values between 0 and 1 to 13 finite "
        "positive multiples of sigma (one per S2 band), got {'1.5': [2.0, 2.0",
        absent=("o.tif",),
    ),
]


def _ensemble_file(tmp: Path, name: str = "ens.json", **changes: object) -> Path:
    """An ensemble file of two small models with sigma (``a`` and ``b``), its entries replaced by ``changes``."""
    from dsen2cr.ensemble_file import write_ensemble_file

    members = [_sigma_weights(tmp, "a.safetensors"), _sigma_weights(tmp, "b.safetensors")]
    path = write_ensemble_file(tmp / name, members, {"scale": [1.0] * 13, "data": "files.csv, split val"})
    content = json.loads(path.read_text())
    path.write_text(json.dumps(content | changes))
    return path


def _changed_member(tmp: Path) -> Path:
    """An ensemble file whose member ``b`` was replaced after it was calibrated."""
    path = _ensemble_file(tmp)
    _sigma_weights(tmp, "b.safetensors")  # initialised anew: other bytes
    return path


CASES += [
    dict(
        name="an ensemble file beside other weights",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_ensemble_file(t), also=_sigma_weights(t, "c.safetensors")
        ),
        message="ens.json: an ensemble file names the whole ensemble (its members and their sigma scale); give it",
        absent=("o.tif",),
    ),
    dict(
        name="an ensemble file whose member changed since it was calibrated",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_changed_member(t)),
        message="has changed since the ensemble was calibrated (SHA-256",
        absent=("o.tif",),
    ),
    dict(
        name="an ensemble file whose member is missing",
        setup=lambda t: _remove_args(
            t,
            "--out",
            str(t / "o.tif"),
            weights=_ensemble_file(t, members=[{"file": "gone.safetensors", "sha256": "0"}] * 2),
        ),
        message="ens.json: its member gone.safetensors is not found",
        absent=("o.tif",),
    ),
    dict(
        name="an ensemble file of one member",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_ensemble_file(t, members=[{"file": "a.safetensors", "sha256": "0"}])
        ),
        message='ens.json: its "members" must list at least two members',
        absent=("o.tif",),
    ),
    dict(
        name="an ensemble file whose sigma scale has 12 factors",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), weights=_ensemble_file(t, sigma_scale={"scale": [1.0] * 12})
        ),
        message="ens.json: stored sigma scale must hold 13 finite positive factors",
        absent=("o.tif",),
    ),
    dict(
        name="an ensemble file whose sigma intervals hold 12 multiples",
        setup=lambda t: _remove_args(
            t,
            "--out",
            str(t / "o.tif"),
            weights=_ensemble_file(t, sigma_scale={"scale": [1.0] * 13, "intervals": {"0.9": [1.5] * 12}}),
        ),
        message="ens.json: stored sigma intervals must map shares of values between 0 and 1 to 13 finite positive",
        absent=("o.tif",),
    ),
    dict(
        name="a JSON file that is no ensemble file as --weights",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_ensemble_file(t, format="stac")),
        message='ens.json: not an ensemble file (no "format": "dsen2cr ensemble 1")',
        absent=("o.tif",),
    ),
    dict(
        name="an ensemble file that is not JSON",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_existing(t, "ens.json", b"{members")),
        message="ens.json: not an ensemble file (not JSON",
        absent=("o.tif",),
    ),
    dict(
        name="export of an ensemble file",
        setup=lambda t: ["export", "--weights", str(_ensemble_file(t)), "--out", str(t / "x.safetensors")],
        message="ens.json: an ensemble file, not one network's weights; --weights of evaluate and remove-clouds runs",
        absent=("x.safetensors",),
    ),
]
