"""The LightningModule that owns the model, the loss and the metrics."""

from __future__ import annotations

import logging
import math
from typing import Any, cast

import lightning as L
import torch
from torchmetrics.aggregation import MeanMetric

from dsen2cr.auto import device_name, has_tf32
from dsen2cr.config import LossSection, OptimSection
from dsen2cr.errors import DSen2CRError
from dsen2cr.losses import carl_loss, l1_loss, likelihood_loss
from dsen2cr.metrics import METRIC_NAMES, REGION_METRIC_NAMES, batch_image_metrics
from dsen2cr.models import DEFAULT_FAMILY, get_family
from dsen2cr.precision import float32_mode
from dsen2cr.weights import ARITHMETIC_KEY, CONFIG_KEY, FAMILY_KEY, WORLD_SIZE_KEY, checkpoint_position
from dsen2cr.weights_info import start_words

log = logging.getLogger(__name__)

#: A checkpoint's sums of its epoch's training loss so far, ``[sum of loss x samples, samples]`` per rank: a run
#: resumed mid-epoch (a SLURM requeue) reports the mean over all the epoch's batches.
EPOCH_LOSS_KEY = "dsen2cr_epoch_loss_sums"


def weights_digest(model: torch.nn.Module) -> torch.Tensor:
    """Three float64 numbers that change with any weight: sum, sum of squares, position-weighted sum."""
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    position = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device) % 9973 + 1
    return torch.stack([flat.sum(), flat.square().sum(), (flat * position).sum()])


class ValidationMeans(torch.nn.Module):
    """The means over the validation patches of the loss, the paper metrics and their cloud/clear variants (and
    with a variance tail the share of values within ±1σ), each patch counted once whatever the number of
    processes: sums and weights in float64, added over the ranks at the epoch's end by every rank in one order
    (a rank with fewer batches, or none with a cloudy region, takes part all the same). A NaN value (an empty
    region, an image smaller than SSIM's window) is left out of its mean; other NaNs make theirs NaN."""

    #: Metrics that a patch may lack (an empty region; SSIM of a patch smaller than its window; SAM of a patch whose
    #: spectra are all zero, no data): their NaN values are left out of the mean. Any other NaN (a NaN prediction)
    #: makes its mean NaN, as it should.
    MAY_LACK = ("ssim", "sam", *REGION_METRIC_NAMES)

    def __init__(self, coverage: bool) -> None:
        super().__init__()
        names = ("loss", *METRIC_NAMES, *REGION_METRIC_NAMES, *(("coverage_1sigma",) if coverage else ()))
        means = {n: MeanMetric(nan_strategy="ignore" if n in self.MAY_LACK else "disable") for n in names}
        self.means = torch.nn.ModuleDict({name: mean.set_dtype(torch.float64) for name, mean in means.items()})

    def update(self, values: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        """Add per-image values (shape (N,)) or a batch's mean (weight: its images) of the named metrics."""
        for name, value in values.items():
            self._mean(name).update(value.detach().double(), weight)

    def compute_and_reset(self) -> dict[str, float]:
        """Every metric's mean over all ranks' patches (NaN where none had a value); the sums start again."""
        out = {name: float(self._mean(name).compute()) for name in self.means}
        for name in self.means:
            self._mean(name).reset()
        return out

    def _mean(self, name: str) -> MeanMetric:
        """The named metric's mean (typed)."""
        return cast(MeanMetric, self.means[name])


def observed_arithmetic(trainer: L.Trainer, device: torch.device, start: tuple[int, int]) -> dict[str, Any]:
    """What a start of a run (at ``start``: epochs finished, batches of the next) computes in, read inside the run
    on its device: Lightning's precision, and the float32 mode of convolutions and matmuls from the flags PyTorch
    computes by (IEEE on a device without TF32, which computes IEEE whatever they say), its device, processes and
    PyTorch."""
    flags, tf32 = float32_mode(), has_tf32(device)
    return {
        "from_epoch": start[0],
        "from_batch": start[1],
        "precision": str(trainer.precision),
        "convolutions": flags["cudnn.conv"] if tf32 else "ieee",
        "matmuls": flags["cuda.matmul"] if tf32 else "ieee",
        "device": device_name(device),
        "processes": trainer.world_size,
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
    }


class NonFiniteLossError(DSen2CRError):
    """The training loss became NaN or infinite."""


class DSen2CRTask(L.LightningModule):
    """DSen2-CR training: CARL or L1 loss (a likelihood for a model with uncertainty), NAdam, paper metrics at
    validation, image grids in TensorBoard."""

    def __init__(
        self,
        model: dict[str, Any],
        loss: dict[str, Any],
        optim: dict[str, Any],
        val_images: int = 4,
        channels_last: bool = True,
        model_family: str = DEFAULT_FAMILY,
        data: dict[str, Any] | None = None,
        init_weights: dict[str, str] | None = None,
    ):
        super().__init__()
        # ``data`` and ``init_weights`` too: what the run trains on and starts from, for the weights' training record
        self.save_hyperparameters()
        self.model_config = get_family(model_family).config_from_dict(model, "model")
        self.model_family = model_family
        self.loss_settings = LossSection(**loss)
        self.optim_settings = OptimSection(**optim)
        self.val_images = val_images
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model_config.build().to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self._loss_sum: torch.Tensor | None = None  # this rank's epoch so far: sum of loss x samples, and samples
        self._samples = 0
        self._resumed_mid_epoch = False  # the next batch's logged loss carries the restored ones'
        self.validation = ValidationMeans(coverage=self.model_config.uncertainty != "none")
        # the arithmetic of each start of the run that computed otherwise (the checkpoint's, then this one's)
        self._arithmetic: list[dict[str, Any]] = []
        self._start = (0, 0)  # where this start of the run begins: epochs finished, batches of the next

    def on_train_start(self) -> None:
        """Record the arithmetic this start of the run trains in, read inside it (a start that computes as the one
        before it adds nothing), and say it."""
        now = observed_arithmetic(self.trainer, self.device, self._start)
        computed = lambda start: {k: v for k, v in start.items() if k not in ("from_epoch", "from_batch")}  # noqa: E731
        if not self._arithmetic or computed(self._arithmetic[-1]) != computed(now):
            self._arithmetic.append(now)
        if self.trainer.is_global_zero:
            log.info("arithmetic: %s", start_words(now))

    def on_train_epoch_start(self) -> None:
        """Start the epoch's sums of the training loss (not called for an epoch resumed mid-way)."""
        self._loss_sum, self._samples = None, 0

    def forward(self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the cloud-free image."""
        return self._predict(s2_cloudy, s1)[0]

    def _predict(self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prediction, and its variance for a model with uncertainty (None otherwise)."""
        s2_cloudy = s2_cloudy.contiguous(memory_format=self.memory_format)
        s1 = (
            s1.contiguous(memory_format=self.memory_format)
            if self.model_config.include_sar and s1 is not None
            else None
        )
        if self.model_config.uncertainty == "none":
            return self.model(s2_cloudy, s1), None
        return self.model.forward_with_variance(s2_cloudy, s1)

    def _loss(self, batch: dict[str, Any], pred: torch.Tensor, variance: torch.Tensor | None) -> torch.Tensor:
        """The configured loss of a batch."""
        settings = self.loss_settings
        if variance is not None:
            aware = {"cloudy": batch["s2_cloudy"], "mask": batch["cloud_mask"]} if settings.cloud_aware else {}
            return likelihood_loss(pred, variance, batch["s2"], kind=settings.name, lam=settings.lam, **aware)
        if settings.name == "l1":
            return l1_loss(pred, batch["s2"])
        return carl_loss(pred, batch["s2_cloudy"], batch["s2"], batch["cloud_mask"], lam=settings.lam)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One optimisation step; stops the run on a NaN or infinite loss."""
        pred, variance = self._predict(batch["s2_cloudy"], batch["s1"])
        loss = self._loss(batch, pred, variance)
        finite = bool(torch.isfinite(loss))
        if not self._on_every_rank(finite):  # every process stops at this step (one alone left the others failing)
            became = f"became {loss.item()}" if not finite else "of another process became NaN or infinite"
            raise NonFiniteLossError(
                f"training loss {became} at epoch {self.current_epoch}, step {self.global_step}; "
                "the run stopped, the checkpoints of earlier epochs are kept (try a lower optim.lr or "
                "trainer.gradient_clip_val)"
            )
        size = pred.shape[0]
        self.log("train_loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        weighted = loss.detach().double() * size
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._samples += size
        logged, weight = loss, size
        if self._resumed_mid_epoch:  # this batch stands for those before the requeue too: the epoch's mean is whole
            logged, weight = (self._loss_sum / self._samples).float(), self._samples
            self._resumed_mid_epoch = False
        # the epoch's mean over every rank's batches (reduced over the ranks once, at the epoch's end)
        self.log("train_loss_epoch", logged, on_step=False, on_epoch=True, sync_dist=True, batch_size=weight)
        # the batch a rank sees (with optim.global_batch, the global batch over the ranks): the largest over them
        self.log("batch_per_device", float(size), on_step=False, on_epoch=True, reduce_fx="max", sync_dist=True)
        return loss

    def _on_every_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process of the run (one small all-reduce under DDP; ``flag`` itself
        for a task that no trainer runs)."""
        trainer = self._trainer
        return flag if trainer is None else trainer.strategy.reduce_boolean_decision(flag, all=True)

    def validation_step(self, batch: list[dict[str, Any]] | dict[str, Any], batch_idx: int) -> None:
        """Validation loss, paper metrics and (first batch) an image grid; a batch is one stack per patch size
        (``collate_by_size``) or a single stack."""
        for index, group in enumerate(batch if isinstance(batch, list) else [batch]):
            pred, variance = self._predict(group["s2_cloudy"], group["s1"])
            size = pred.shape[0]
            self.validation.update({"loss": self._loss(group, pred, variance)}, weight=size)
            # per image: a region's mean is over the images that have it (a batch's was weighted by all its images)
            self.validation.update(batch_image_metrics(pred, group["s2"], group["s2_cloudy"], group["cloud_mask"]))
            if variance is not None:  # calibration: the share of values within one sigma of the target (ideal 0.683)
                within = (pred - group["s2"]).abs() <= variance.sqrt()
                self.validation.update({"coverage_1sigma": within.float().mean()}, weight=size)
            if batch_idx == 0 and index == 0:
                self._log_image_grid(group, pred)

    def on_validation_epoch_end(self) -> None:
        """Log the validation's means over every patch of every rank: val_loss always, a metric when it is finite
        (one no patch had is not logged); a NaN or infinite val_loss (a diverged model) stops the run here, as a
        training loss does, before this epoch's checkpoint (every rank: the means are over all of them)."""
        means = self.validation.compute_and_reset()
        for name, value in means.items():
            if math.isfinite(value) or name == "loss":  # the same on every rank: their syncs pair
                self.log(f"val_{name}", value, prog_bar=name == "loss", sync_dist=True)
        if not math.isfinite(means["loss"]):
            raise NonFiniteLossError(
                f"validation loss became {means['loss']} at epoch {self.current_epoch}; the run stopped, the "
                "checkpoints of earlier epochs are kept (a diverged model: try a lower optim.lr, "
                "trainer.gradient_clip_val, or trainer.precision 32-true)"
            )

    def _log_image_grid(self, batch: dict[str, Any], pred: torch.Tensor) -> None:
        """Rows of SAR, cloudy, prediction, target and mask for the first images, to TensorBoard."""
        writers = [getattr(logger, "experiment", None) for logger in self.loggers]  # TensorBoard's is not the first
        experiment = next((w for w in writers if hasattr(w, "add_image")), None)
        if experiment is None or self.global_rank != 0:
            return
        from dsen2cr.visualize import training_grid

        grid = training_grid(batch, pred.detach(), self.val_images)
        experiment.add_image("val/sar_cloudy_pred_target_mask", grid, self.global_step, dataformats="HWC")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """NAdam with the paper's settings."""
        o = self.optim_settings
        return torch.optim.NAdam(
            self.model.parameters(), lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps, momentum_decay=o.momentum_decay
        )

    def on_train_end(self) -> None:
        """Check that every process ends with the same weights (DDP keeps them in sync; a divergence is a bug
        or a broken node). Rank 0 writes the per-rank digests to ``weights_digest.json`` in the run folder."""
        digest = weights_digest(self.model).to(self.device)
        gathered = torch.as_tensor(self.all_gather(digest)).reshape(-1, digest.numel()).cpu()
        if self.trainer.is_global_zero:
            import json
            from pathlib import Path

            from dsen2cr.outputs.files import atomic_path

            path = Path(self.trainer.default_root_dir) / "weights_digest.json"
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"ranks": gathered.tolist()}) + "\n")
        if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
            raise DSen2CRError(f"the {gathered.shape[0]} training processes ended with different weights")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model configuration so that the checkpoint alone rebuilds the network, and the run's
        processes (a checkpoint saved mid-epoch continues only on as many)."""
        checkpoint[CONFIG_KEY] = self.model_config.to_dict()
        checkpoint[FAMILY_KEY] = self.model_family
        checkpoint[WORLD_SIZE_KEY] = self.trainer.world_size
        checkpoint[ARITHMETIC_KEY] = self._arithmetic
        # every rank saves (rank 0 writes): the ranks' sums of the epoch's loss so far
        so_far = torch.zeros((), dtype=torch.float64, device=self.device) if self._loss_sum is None else self._loss_sum
        mine = torch.stack([so_far, so_far.new_tensor(float(self._samples))])
        checkpoint[EPOCH_LOSS_KEY] = torch.as_tensor(self.all_gather(mine)).reshape(-1, 2).tolist()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The arithmetic of the run's earlier starts, and where this one begins; a checkpoint saved mid-epoch: this
        rank's sums of the epoch's loss so far go on."""
        earlier = checkpoint.get(ARITHMETIC_KEY)
        self._arithmetic = list(earlier) if isinstance(earlier, list) else []
        self._start = checkpoint_position(checkpoint)
        sums = checkpoint.get(EPOCH_LOSS_KEY)
        if not self._start[1] or not isinstance(sums, list) or len(sums) <= self.global_rank:
            return
        total, samples = sums[self.global_rank]
        self._loss_sum = torch.tensor(total, dtype=torch.float64, device=self.device)
        self._samples, self._resumed_mid_epoch = int(samples), True
