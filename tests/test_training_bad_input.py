"""Bad input to train, table-driven through the console entry point (the ``check_case`` fixture):
each row is an unusual but plausible input; the command exits with the expected status and one line on
stderr naming the file or option and the problem, no traceback, inputs unchanged, nothing left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr import create_model
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.training.module import DSen2CRTask
from dsen2cr.weights import CONFIG_KEY

UTM32N = CRS.from_epsg(32632)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _mkrun(tmp: Path) -> Path:
    run = tmp / "existing"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")  # a folder without one is not a run
    (run / "config.yaml").write_text("model: {}\n")
    return run


def _ckpt_like(tmp: Path) -> Path:
    """A Lightning-style checkpoint of the paper model without SAR."""

    model = create_model("dsen2cr-nosar")
    path = tmp / "other.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CONFIG_KEY: model.config.to_dict()},
        path,
    )
    return path


def _with_head(tmp: Path) -> Path:
    """Weights of the small model with a variance head."""
    from dsen2cr.models.dsen2cr import DSen2CR
    from dsen2cr.weights import save_weights

    return save_weights(DSen2CR(num_blocks=4, num_features=32, uncertainty="diag"), tmp / "head.safetensors")


ORIGIN = from_origin(500000, 5000000, 10, 10)
KERAS_FILE = Path(__file__).parent / "fixtures" / "keras" / "keras224_full_sar.h5"


def _train(tmp: Path, *overrides: str, **sections: dict) -> list[str]:
    return ["train", "--config", str(tmp.config(**sections)), "--no-progress", *overrides]


def _deep_yaml(tmp: Path) -> Path:
    return _write(tmp / "deep.yaml", "[" * 20000 + "]" * 20000)


def _validating_on_training_patches(tmp: Path) -> list[str]:
    """A file list whose training patch is listed in the validation split too (a list split by hand)."""
    argv = _train(tmp)
    files = tmp.tree() / "files.csv"  # type: ignore[attr-defined]
    training = files.read_text().splitlines()[0]
    files.write_text(files.read_text() + "2" + training[1:] + "\n")
    return argv


#: The table: each row is run by ``test_bad_input`` through the ``check_case`` fixture.
CASES = [
    dict(
        name="train: a validation patch that is a training patch too",
        setup=_validating_on_training_patches,
        message="files.csv: 1 of the 2 validation patches are training patches too (e.g. ROIs1158_spring_1_p0): the "
        "validation would score what the model trains on; give each patch one split",
        absent=("run",),
    ),
    dict(
        name="train: unknown key",
        setup=lambda t: ["train", "--config", str(t.config(optim={"lrr": 1.0}))],
        message="optim: unknown key 'lrr'; did you mean 'lr'?",
        absent=("run",),
    ),
    dict(
        name="train: wrong type",
        setup=lambda t: ["train", "--config", str(t.config(optim={"epochs": "many"}))],
        message="optim.epochs: expected int, got 'many'",
        absent=("run",),
    ),
    dict(
        name="train: missing config",
        setup=lambda t: ["train", "--config", str(t / "nope.yaml")],
        message="nope.yaml: config file not found",
    ),
    dict(
        name="train: a misspelt bundled config",  # 'papr: config file not found', the bundled names unsaid
        setup=lambda t: ["train", "--config", "papr"],
        message="papr: config file not found, nor a bundled config (paper, paper-fast, paper-uncertainty, "
        "small-cpu); did you mean paper?",
    ),
    dict(
        name="train: invalid YAML",
        setup=lambda t: ["train", "--config", str(_write(t / "bad.yaml", "optim: [1, 2"))],
        message="bad.yaml: not valid YAML",
    ),
    dict(
        name="train: data root without the listed files",
        setup=lambda t: ["train", "--config", str(t.config()), f"data.root={_mkdir(t / 'elsewhere')}"],
        message="file of patch ROIs1158_spring_1_p0 not found",
        absent=("run/checkpoints",),
    ),
    dict(
        name="train: data root that does not exist",
        setup=lambda t: ["train", "--config", str(t.config()), f"data.root={t / 'elsewhere'}"],
        message="elsewhere is not a folder (the dataset root the file list and ROI lists refer to)",
        absent=("run/checkpoints",),
    ),
    dict(
        name="train: the paper config with only data.root set",
        setup=lambda t: ["train", "--config", "paper", f"data.root={t.tree()}", f"trainer.out_dir={t / 'run'}"],
        message="data.file_list: /data/SEN12MS-CR/files.csv not found; it is not under data.root ",
        absent=("run",),
    ),
    dict(
        name="train: malformed file list line",
        setup=lambda t: ["train", "--config", str(t.config()), f"data.file_list={_write(t / 'l.csv', '1,a,b,c')}"],
        message="l.csv:1: expected 5 fields",
        absent=("run/checkpoints",),
    ),
    dict(
        name="train: folder holds a run",
        setup=lambda t: ["train", "--config", str(t.config()), f"trainer.out_dir={_mkrun(t)}"],
        message="already holds a run; resume it with --resume, or pass --overwrite",
    ),
    dict(
        name="train: resume weights of another variant",
        setup=lambda t: ["train", "--config", str(t.config()), "--resume", str(_ckpt_like(t))],
        message="holds a B=16, F=256 without SAR model, but B=4, F=32 with SAR was asked for",
        absent=("run/checkpoints",),
    ),
    dict(  # an internal error (torch.load's UnpicklingError) once the weights had loaded for the variant check
        name="train: resume from a weights file",
        setup=lambda t: _train(t, "--resume", str(t.weights())),
        message="dsen2cr-small.safetensors: holds a safetensors weights file, not a checkpoint of dsen2cr train; "
        "--resume continues a run from one of its checkpoints (RUN/checkpoints/last.ckpt); to start a new run from "
        "these weights, set model.init_weights=",
        absent=("run",),
    ),
    dict(
        name="train: resume from a Keras file",
        setup=lambda t: _train(t, "model.num_blocks=5", "model.num_features=8", "--resume", str(KERAS_FILE)),
        message="keras224_full_sar.h5: holds an HDF5 file (Keras weights), not a checkpoint of dsen2cr train",
        absent=("run",),
    ),
    dict(
        name="train: init_weights of another model",
        setup=lambda t: _train(t, f"model.init_weights={t.weights('dsen2cr-small-nosar')}"),
        message="dsen2cr-small-nosar.safetensors: holds a B=4, F=32 without SAR model, but the run trains B=4, F=32 "
        "with SAR; set model.variant (or model.num_blocks, num_features, include_sar, uncertainty) to the weights'",
        absent=("run",),
    ),
    dict(  # a head the run would not train: refused, not dropped
        name="train: init_weights with a variance head, the run without",
        setup=lambda t: _train(t, f"model.init_weights={_with_head(t)}"),
        message="holds a B=4, F=32 with SAR, variance per band model, but the run trains B=4, F=32 with SAR;",
        absent=("run",),
    ),
    dict(  # read before the run folder is touched: --overwrite must not have replaced the run by then
        name="train: init_weights missing, with --overwrite of a run",
        setup=lambda t: _train(
            t, f"trainer.out_dir={_mkrun(t)}", f"model.init_weights={t / 'gone.safetensors'}", "--overwrite"
        ),
        message="gone.safetensors: weights file not found",
        keep=("existing/checkpoints/last.ckpt", "existing/config.yaml"),
    ),
    dict(
        name="train: init_weights a file that holds no weights",
        setup=lambda t: _train(t, f"model.init_weights={_write(t / 'notes.txt', 'not weights')}"),
        message="notes.txt: holds a text file, not weights dsen2cr reads",
        absent=("run",),
    ),
    dict(
        name="train: out_dir is the data root",
        setup=lambda t: _train(t, f"trainer.out_dir={t.tree()}", "--overwrite"),
        message="is inside the data root",
        keep=("data/files.csv",),
    ),
    dict(
        name="train: out_dir inside the data root",
        setup=lambda t: _train(t, f"trainer.out_dir={t.tree() / 'runs' / 'a'}"),
        message="data/runs/a is inside the data root",
        absent=("data/runs",),
    ),
    dict(
        name="train: a batch larger than the epoch with drop_last",
        setup=lambda t: _train(t, "optim.batch_size=64", "data.drop_last=true"),
        message="optim.batch_size: 64 per process, but an epoch has 1 training samples per process and "
        "data.drop_last is true: no batch would run",
        absent=("run",),
    ),
    dict(
        name="train: a fraction of the validation below one batch",  # an internal error once the first epoch trained
        setup=lambda t: _train(t, "trainer.limit_val_batches=0.5"),
        message="trainer.limit_val_batches: 0.5 of the 1 validation batch a process runs is less than one batch; "
        "raise it to at least 1, or give a number of batches (an integer)",
        absent=("run",),
    ),
    dict(
        name="train: a fraction of the training below one batch",  # an internal error (Lightning's)
        setup=lambda t: _train(t, "trainer.limit_train_batches=0.5"),
        message="trainer.limit_train_batches: 0.5 of the 1 training batch a process runs is less than one batch; "
        "raise it to at least 1, or give a number of batches (an integer)",
        absent=("run",),
    ),
    dict(
        name="train: optim.lr=1e400",
        setup=lambda t: _train(t, "optim.lr=1e400"),
        message="optim.lr: expected a finite number",
        absent=("run",),
    ),
    dict(
        name="train: loss.lam=.nan",
        setup=lambda t: _train(t, "loss.lam=.nan"),
        message="loss.lam: expected a finite number",
        absent=("run",),
    ),
    dict(
        name="train: data.repeats=100000000000",
        setup=lambda t: _train(t, "data.repeats=100000000000"),
        message="data.repeats: must be in [1, 10000]",
        absent=("run",),
    ),
    dict(
        name="train: trainer.seed=-1",  # an internal error once the data loaded (Lightning's seed_everything)
        setup=lambda t: _train(t, "trainer.seed=-1"),
        message="trainer.seed: must be in [0, 4294967295], got -1",
        absent=("run",),
    ),
    dict(
        name="train: optim.epochs=0",  # the bound was printed as 1e+06
        setup=lambda t: _train(t, "optim.epochs=0"),
        message="optim.epochs: must be in [1, 1000000], got 0",
        absent=("run",),
    ),
    dict(
        name="train: trainer.devices=0",
        setup=lambda t: _train(t, "trainer.devices=0"),
        message="trainer.devices: must be in [1,",
        absent=("run",),
    ),
    dict(
        name="train: config whose top level is a list",
        setup=lambda t: ["train", "--config", str(_write(t / "l.yaml", "- 1\n- 2\n"))],
        message="expected a mapping of sections",
    ),
    dict(
        name="train: a 20,000-level YAML",
        setup=lambda t: ["train", "--config", str(_deep_yaml(t))],
        message="nested too deeply",
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)


def test_a_failed_start_is_not_a_run(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """config.yaml and logs without a checkpoint (a run that failed to start) do not block the rerun."""
    run = workdir / "run"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    assert main(_train(workdir, "optim.epochs=1")) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_worker_errors_are_one_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """An error raised in a DataLoader worker reaches the user as its own message, not a folded traceback."""
    config = workdir.config()  # writes the small tree
    _, file_list = workdir.tree_with_two_test_patches(nan_cloudy=True)  # adds a patch whose cloudy image is all NaN
    train_list = _write(workdir / "train.csv", file_list.read_text().replace("\n3\t", "\n1\t"))
    argv = ["train", "--config", str(config), "--no-progress", "data.num_workers=1", "optim.epochs=1"]
    status = main([*argv, f"data.file_list={train_list}", "data.crop_size=32"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert status == 2 and len(lines) == 1, err
    assert "every value is NaN" in lines[0] and "Original Traceback" not in lines[0] and "File " not in lines[0]


def test_a_run_stopped_by_bad_data_says_how_to_go_on(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A patch that cannot be read in a later epoch (a file damaged after data index checked its header) stops
    the run with the file's one line, and the run's checkpoints stay; the line did not say so, nor what to do
    once the file is fixed or dropped from the file list: resume from the newest checkpoint."""
    from dsen2cr.data import dataset

    run = workdir / "run"
    real_read = dataset.read_window

    def read_window(source, window):  # the file turns unreadable once the first epoch's checkpoint is written
        if any((run / "checkpoints").glob("epoch*.ckpt")):
            raise DSen2CRError(f"{source.name}: cannot read S2 cloud-free (TIFFReadDirectory: failed)")
        return real_read(source, window)

    monkeypatch.setattr(dataset, "read_window", read_window)
    assert main(_train(workdir, "optim.epochs=3")) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    newest = max((run / "checkpoints").glob("*.ckpt"), key=lambda path: path.stat().st_mtime_ns)
    assert len(lines) == 1 and ": cannot read S2 cloud-free (TIFFReadDirectory: failed)" in lines[0], lines
    assert lines[0].endswith(
        f"; the run's complete checkpoints stay: once that is fixed, resume from the newest, --resume {newest}"
    ), lines[0]
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 1
    assert main(_train(workdir, "optim.epochs=3", "--resume", str(newest))) == 2  # still unreadable: no hint twice
    assert capsys.readouterr().err.count("complete checkpoints stay") == 1
    # a NaN loss is not one to resume into (a resume keeps optim.lr): its own line, without the hint
    monkeypatch.setattr(dataset, "read_window", real_read)
    monkeypatch.setattr(DSen2CRTask, "_loss", lambda *args: torch.tensor(float("nan")))
    assert main(_train(workdir, "optim.epochs=3", "--resume", str(newest))) == 2
    err = capsys.readouterr().err
    assert "training loss became nan" in err and "resume from the newest" not in err, err


def test_a_resume_keeps_the_runs_settings(
    workdir: Path, capsys: pytest.CaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """A resumed run continues with its own settings: the optimiser's state (its learning rate too) comes from
    the checkpoint, so optim.lr=0.5 trained at the run's lr while config.yaml and the checkpoints said 0.5.
    Refused (exit 2, naming the key and both values), as is a changed seed and optim.epochs the checkpoint has
    already finished (Lightning's 'internal error'); the run's files stay as they were. More epochs, other
    workers: resumed, without Lightning's warning that the checkpoint folder is not empty."""
    config = str(workdir.config())
    assert main(["train", "--config", config, "--no-progress"]) == 0
    run = workdir / "run"
    last = run / "checkpoints" / "last.ckpt"
    kept = {path: path.read_bytes() for path in (last, run / "config.yaml")}
    resume = ["train", "--config", config, "--no-progress", "--resume", str(last)]
    for override, said in (
        ("optim.lr=0.5", "resumed with optim.lr 0.5, but the run trained with 7e-05"),
        ("trainer.seed=7", "resumed with trainer.seed 7, but the run trained with 42"),
        ("optim.epochs=1", "has finished 1 epoch; optim.epochs 1 leaves none to train: set it above 1"),
    ):
        capsys.readouterr()
        assert main([*resume, override]) == 2, override
        err = capsys.readouterr().err
        assert said in err and "internal error" not in err, err
        assert all(path.read_bytes() == content for path, content in kept.items())
    # a checkpoint of such a resume from before: its record says 0.5, its optimiser state the lr it trained with
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["optim"]["lr"] = 0.5
    torch.save(checkpoint, workdir / "recorded.ckpt")
    recorded = ["train", "--config", config, "--no-progress", "--resume", str(workdir / "recorded.ckpt")]
    assert main([*recorded, "optim.lr=0.5", "optim.epochs=2"]) == 2
    assert "resumed with optim.lr 0.5, but the run trained with 7e-05" in capsys.readouterr().err
    recwarn.clear()
    assert main([*resume, "optim.epochs=2", "data.num_workers=1"]) == 0
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 2
    # Lightning's warning that the checkpoint folder is not empty says nothing to a resume (it must not be empty)
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]


def test_a_mid_epoch_checkpoint_resumes_on_as_many_processes(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint saved in the middle of an epoch (a SLURM requeue's) continues that epoch after the batches
    each process had trained: on another number of processes those batches are other samples, and the epoch
    would train some twice and others never. Refused, naming both counts and what to do; an epoch's own
    checkpoint resumes on any number (as before). Made here as Lightning saves one at a batch's end, by 2."""
    config = str(workdir.config())
    assert main(["train", "--config", config, "--no-progress"]) == 0
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["dsen2cr_world_size"] == 1
    checkpoint["dsen2cr_world_size"] = 2
    loops = checkpoint["loops"]["fit_loop"]
    for counts in loops["epoch_progress"].values():
        counts["processed"] = counts["completed"] = counts["started"] - 1  # its epoch under way
    loops["epoch_loop.batch_progress"]["current"].update(ready=1, started=1, processed=1, completed=0)
    middle = workdir / "run" / "checkpoints" / "requeue.ckpt"
    torch.save(checkpoint, middle)
    kept = last.read_bytes()
    capsys.readouterr()
    assert main(["train", "--config", config, "--no-progress", "--resume", str(middle), "optim.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"{middle}: saved in the middle of epoch 1 by 2 processes, resumed by 1" in err, err
    assert err.count("\n") == 1 and last.read_bytes() == kept


@pytest.mark.slow
def test_sigterm_during_training_keeps_complete_checkpoints(
    workdir: Path, terminate_when: Callable[..., int], private_tmp_env: dict[str, str]
) -> None:
    config = yaml.safe_load(workdir.config(optim={"epochs": 50}, data={"repeats": 8}).read_text())
    path = _write(workdir / "long.yaml", yaml.safe_dump(config))
    checkpoints = workdir / "run" / "checkpoints"
    command = ["train", "--config", str(path), "--no-progress"]
    status = terminate_when(command, lambda: (checkpoints / "last.ckpt").is_file(), private_tmp_env)
    assert status == 143
    from dsen2cr.weights import load_model

    load_model(checkpoints / "last.ckpt")  # complete and loadable
    assert not list(checkpoints.glob(".*tmp*"))


def test_a_validation_split_smaller_than_the_processes_is_refused() -> None:
    """Under DDP each process validates its own patches, each patch once; a process left without one would skip
    the validation whose sums the others add up with it, and they would wait for it for ever. The bundled
    sample's validation split has one patch: refused on two processes, taken on one."""
    from types import SimpleNamespace

    from dsen2cr.config import DataSection, LossSection
    from dsen2cr.training.datamodule import SEN12MSCRDataModule

    module = SEN12MSCRDataModule(DataSection(), LossSection(), 4, 0)
    module.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    with pytest.raises(DSen2CRError, match="the validation split has 1 patch, fewer than the run's 2 processes"):
        module.setup("fit")
    module.trainer = SimpleNamespace(world_size=1)  # type: ignore[assignment]
    module.setup("fit")
    assert module.val_set is not None and len(module.val_set) == 1
