"""Post-hoc calibration of a trained checkpoint: the backbone is never retrained.

Each calibration changes only the prediction head `fc_cb` (a linear layer) of a restored
checkpoint and is registered in CALIBRATIONS with its typed parameters:

| name                | what                                                     | source |
|---------------------|----------------------------------------------------------|--------|
| `tau-norm`          | `W_k <- W_k / ||W_k||^tau`                               | Kang et al., ICLR 2020 |
| `logit-adjustment`  | `z_k <- z_k - tau log pi_k` (folded into the bias)       | Menon et al., ICLR 2021 |
| `maxnorm`           | classifier re-training with a class-balanced loss, weight decay and the per-class max-norm projection | Alshammari et al., CVPR 2022 |
| `temperature`       | `z <- z / T`, one T fitted by NLL on held-out logits (folded into fc_cb)  | Guo et al., ICML 2017 |

`calibrate_checkpoint` loads a checkpoint, applies one calibration to a copy of its model,
measures both on the test set (its images pass through the encoder once, the two heads
then score them), and writes a new checkpoint (same format, the calibration recorded
under `calibrations`) and a JSON file of the metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glmc.checkpoint import save_checkpoint, warn
from glmc.config import OptimConfig, coerce, parse_override
from glmc.data.batch import BatchSpec, TrainingBatches
from glmc.optim import learning_rate, set_learning_rate
from glmc.errors import ConfigError, GlmcError
from glmc.evaluation import Restored, evaluate_heads, evaluate_restored, restore_for_evaluation, same_encoder
from glmc.files import write_text_atomically
from glmc.metrics import Metrics, format_percent, format_shots
from glmc.methods.losses import effective_number_weights, focal_loss, log_prior
from glmc.models.heads import glmc_heads, prediction_head
from glmc.precision import autocast, channels_last, predict_logits
from glmc.registry import Registry, unknown_name_message
from glmc.rundir import writing_into

# ---------------------------------------------------------------- the pure functions


def tau_normalised(weight: Tensor, tau: float) -> Tensor:
    """Kang et al. 2020's tau-normalised classifier: `W_k / ||W_k||_2^tau`, row by row.

    weight: K x d -> K x d. tau = 0 is the identity, tau = 1 gives unit rows.
    """
    norms = torch.linalg.vector_norm(weight, dim=1, keepdim=True)  # K x 1
    return weight / norms.clamp_min(1e-12).pow(tau)


def logit_adjusted_bias(bias: Tensor, log_prior: Tensor, tau: float) -> Tensor:
    """Menon et al. 2021's post-hoc logit adjustment `z_k - tau log pi_k`, as a new bias (length K)."""
    return bias - tau * log_prior.to(bias)


def max_norm_threshold(weight: Tensor, t: float) -> Tensor:
    """MaxNorm's threshold `min + t (max - min)` of the per-class row norms (Alshammari et al. 2022); 0-dim."""
    norms = torch.linalg.vector_norm(weight, dim=1)  # K
    return norms.min() + t * (norms.max() - norms.min())


def max_norm_projection(weight: Tensor, threshold: Tensor | float) -> Tensor:
    """Project every row onto the ball of radius `threshold`: rows longer than it are scaled
    back onto it, the others are left exactly as they are. weight: K x d -> K x d.
    """
    norms = torch.linalg.vector_norm(weight, dim=1, keepdim=True)  # K x 1
    scale = torch.where(norms > threshold, threshold / norms.clamp_min(1e-12), torch.ones_like(norms))
    return weight * scale


def class_balanced_softmax_bce(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """The class-balanced "softmax" loss of Alshammari et al.'s released code (after Cui et al.'s
    CB_loss port): binary cross-entropy between softmax(z) and onehot(y), every element of
    row i weighted by w_{y_i}, averaged over N x K. logits: N x K, labels: N, weights: K -> scalar.
    """
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # N x K
    row_weights = weights.to(logits.dtype)[labels][:, None].expand_as(onehot)  # N x K
    return F.binary_cross_entropy(logits.softmax(dim=1), onehot, weight=row_weights)


# ---------------------------------------------------------------- the registry


class Calibration(typing.Protocol):
    Params: type
    linear_only: bool  # it edits fc_cb's weight or bias, so it needs `linear_head`: refused before any work otherwise

    def __init__(self, params: Any) -> None: ...

    def __call__(self, model: nn.Module, restored: Restored) -> dict:
        """Calibrate `model` (a copy of `restored.model`) in place; returns facts worth recording."""


CALIBRATIONS: Registry[Callable[..., Calibration]] = Registry("calibration")


def is_linear_with_bias(head: nn.Module) -> bool:
    return type(head) is nn.Linear and head.bias is not None


def linear_head(model: nn.Module, name: str) -> nn.Linear:
    """The prediction head, which a calibration editing its weight or bias needs to be a linear layer with a bias."""
    head = prediction_head(model)
    if not is_linear_with_bias(head):
        raise GlmcError(f"calibration {name} needs a linear classifier with a bias (model.classifier=linear), "
                        f"this checkpoint's is a {type(head).__name__}")
    return head


TAU_GRID_STEP = 0.05  # fit=true: the taus tried, 0, 0.05, ... up to the grid's end


@dataclass(frozen=True)
class TauNormParams:
    # Kang et al. choose tau in [0, 1] on a validation set; 1 (every row unit norm) is the
    # end of their range. The bias is kept. fit=true chooses it so, on the run's validation set.
    tau: float = 1.0
    fit: bool = False

    def __post_init__(self) -> None:
        if not self.tau >= 0:
            raise ConfigError(f"tau-norm tau must be >= 0, got {self.tau}")


@CALIBRATIONS.register("tau-norm")
class TauNorm:
    """tau-normalisation (Kang et al. 2020, "Decoupling Representation and Classifier for
    Long-Tailed Recognition", the tau-normalised classifier): `w_k <- w_k / ||w_k||^tau`;
    with `fit`, tau in [0, 1.5] maximising the validation set's balanced accuracy."""

    Params = TauNormParams
    linear_only = True
    GRID_END = 1.5

    def __init__(self, params: TauNormParams) -> None:
        self.params = params

    def __call__(self, model: nn.Module, restored: Restored) -> dict:
        head = linear_head(model, "tau-norm")
        weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
        tau, facts = chosen_tau(self.params, model, restored, self.GRID_END, lambda t: (tau_normalised(weight, t), bias))
        with torch.no_grad():
            head.weight.copy_(tau_normalised(weight, tau))
        return facts


@dataclass(frozen=True)
class LogitAdjustmentParams:
    # Menon et al.'s temperature; tau = 1 is their Bayes-optimal choice for the balanced error.
    # fit=true chooses it in [0, 2] on the run's validation set instead.
    tau: float = 1.0
    fit: bool = False

    def __post_init__(self) -> None:
        if not self.tau >= 0:
            raise ConfigError(f"logit-adjustment tau must be >= 0, got {self.tau}")


@CALIBRATIONS.register("logit-adjustment")
class LogitAdjustment:
    """Post-hoc logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment"):
    predict `argmax_k z_k - tau log pi_k`, pi the training label prior; folded into fc_cb's
    bias, so the checkpoint keeps its architecture; with `fit`, tau in [0, 2] maximising the
    validation set's balanced accuracy."""

    Params = LogitAdjustmentParams
    linear_only = True
    GRID_END = 2.0

    def __init__(self, params: LogitAdjustmentParams) -> None:
        self.params = params

    def __call__(self, model: nn.Module, restored: Restored) -> dict:
        head = linear_head(model, "logit-adjustment")
        prior = log_prior(restored.checkpoint["class_counts"])  # K
        weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
        tau, facts = chosen_tau(self.params, model, restored, self.GRID_END,
                                lambda t: (weight, logit_adjusted_bias(bias, prior, t)))
        with torch.no_grad():
            head.bias.copy_(logit_adjusted_bias(bias, prior, tau))
        return facts


def chosen_tau(params: TauNormParams | LogitAdjustmentParams, model: nn.Module, restored: Restored, end: float,
               head_at: Callable[[float], tuple[Tensor, Tensor]]) -> tuple[float, dict]:
    """The given tau (nothing to record), or with `params.fit` the one `fitted_tau` chooses and its facts."""
    if not params.fit:
        return params.tau, {}
    return fitted_tau(model, restored, end, head_at)


def fitted_tau(model: nn.Module, restored: Restored, end: float, head_at: Callable[[float], tuple[Tensor, Tensor]]) -> tuple[float, dict]:
    """The tau of the grid 0, TAU_GRID_STEP, ..., `end` whose head (`head_at(tau)`: weight, bias) has the best balanced
    accuracy on the run's validation set (the first of equals), and the facts to record."""
    features, labels = validation_features(model, restored)
    grid = [round(TAU_GRID_STEP * k, 4) for k in range(int(round(end / TAU_GRID_STEP)) + 1)]
    scores = []
    for tau in grid:
        weight, bias = head_at(tau)
        scores.append(balanced_accuracy(features @ weight.T.to(features) + bias.to(features), labels))
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    return grid[best], {"tau": grid[best], "fitted_on": "validation set",
                        "validation_balanced_accuracy": round(scores[best], 4)}


@torch.no_grad()
def validation_features(model: nn.Module, restored: Restored) -> tuple[Tensor, Tensor]:
    """The pooled features (N x d, fp32) and labels (N) of the run's validation set: what every tau is tried on."""
    config = restored.config
    try:
        held_out = restored.dataset.test_set(config.data, config.train.eval_batch_size, restored.device, part="val")
    except GlmcError as missing:
        raise GlmcError(f"fit=true chooses tau on a validation set, and this run has none ({missing})") from None
    model.eval()
    features, labels = [], []
    for inputs, targets in held_out.batches():
        with autocast(restored.precision, restored.device):
            features.append(model(channels_last(inputs)).feature.float())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def balanced_accuracy(logits: Tensor, labels: Tensor) -> float:
    """The mean over classes present in `labels` of each one's accuracy, percent."""
    correct = (logits.argmax(dim=1) == labels).double()
    classes = labels.unique()
    return float(torch.stack([correct[labels == k].mean() for k in classes]).mean() * 100)


@dataclass(frozen=True)
class TemperatureParams:
    # the held-out set T is fitted on: "auto" is the validation set where the dataset has one, else
    # the test set (with a warning: then the calibration is tuned on the test set); or "val" / "test"
    fit_on: str = "auto"

    def __post_init__(self) -> None:
        if self.fit_on not in ("auto", "val", "test"):
            raise ConfigError(f"temperature fit_on must be auto, val or test, got {self.fit_on!r}")


def fitted_temperature(logits: Tensor, labels: Tensor) -> float:
    """The single T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017), by L-BFGS on log T.

    logits: N x K, labels: N. In float64 on the CPU; T does not change the argmax, so top-1 stays.
    """
    logits, labels = logits.double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_t.detach().exp())


@CALIBRATIONS.register("temperature")
class TemperatureScaling:
    """Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one T
    fitted by NLL on held-out logits, `softmax(z / T)`. On a linear fc_cb it is folded into the weight and
    bias, so the checkpoint keeps its architecture; on a cosine one (LDAM's `s cos`) it divides the heads'
    logit scale, which the calibrated checkpoint records. It changes confidence (ECE, NLL), never the top-1."""

    Params = TemperatureParams
    linear_only = False

    def __init__(self, params: TemperatureParams) -> None:
        self.params = params

    def __call__(self, model: nn.Module, restored: Restored) -> dict:
        part = self._held_out_part(restored)
        config = restored.config
        logits, labels = [], []
        model.eval()
        for inputs, targets in restored.dataset.test_set(config.data, config.train.eval_batch_size, restored.device,
                                                         part=part).batches():
            logits.append(predict_logits(model, inputs, restored.precision))
            labels.append(targets)
        temperature = fitted_temperature(torch.cat(logits), torch.cat(labels))
        head = prediction_head(model)
        if is_linear_with_bias(head):
            with torch.no_grad():
                head.weight.div_(temperature)
                head.bias.div_(temperature)
        else:
            glmc_heads(model).logit_scale /= temperature
        fitted = "validation set" if part == "val" else "test set: no validation split, so tuned on the test set"
        return {"temperature": round(temperature, 6), "fitted_on": fitted}

    def _held_out_part(self, restored: Restored) -> str:
        wanted = self.params.fit_on
        if wanted == "auto":
            try:
                restored.dataset.test_set(restored.config.data, 1, restored.device, part="val")
                return "val"
            except GlmcError:
                wanted = "test"
        if wanted == "test":
            warn(f"temperature scaling: fitting T on the test set of {restored.dataset.name} (it has no validation "
                 "split); the calibrated metrics are then tuned on the test set")
        return wanted


MAXNORM_LOSSES = ("focal-softmax", "softmax-bce")
PROJECTIONS = ("epoch", "step")


@dataclass(frozen=True)
class MaxNormParams:
    """Alshammari et al.'s second stage, which the GLMC "+ MaxNorm" rows follow (docs/calibration.md).
    The GLMC authors never released their exact settings (their issue #15)."""

    epochs: int = 10
    lr: float = 0.01  # SGD, cosine over `epochs`, stepped per epoch
    momentum: float = 0.9
    weight_decay: float = 0.1  # on the classifier's weight and bias
    threshold: float = 0.1  # t of the threshold min + t (max - min) of the row norms at the start
    cb_beta: float = 0.9999  # effective-number class weights (Cui et al. 2019)
    focal_gamma: float = 2.0
    # "focal-softmax": Alshammari et al.'s class-balanced focal-softmax, mean_i w_y (1 - p_y)^gamma (-log p_y).
    # "softmax-bce": what their released code computes (Cui et al.'s CB_loss, type "softmax"):
    # weighted binary cross-entropy of softmax(z) against onehot(y); it ignores gamma.
    loss: str = "focal-softmax"
    # "epoch": project after every training epoch, as their code does;
    # "step": after every SGD step (projected gradient descent taken literally).
    projection: str = "epoch"
    batch_size: int | None = None  # None: the run's train.batch_size (their 64 = GLMC's)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "epochs must be > 0", self.epochs),
            (self.lr > 0, "lr must be > 0", self.lr),
            (self.momentum >= 0, "momentum must be >= 0", self.momentum),
            (self.weight_decay >= 0, "weight_decay must be >= 0", self.weight_decay),
            (0 <= self.threshold <= 1, "threshold must be in [0, 1]", self.threshold),
            (0 <= self.cb_beta < 1, "cb_beta must be in [0, 1)", self.cb_beta),
            (self.focal_gamma >= 0, "focal_gamma must be >= 0", self.focal_gamma),
            (self.loss in MAXNORM_LOSSES, f"loss must be one of {', '.join(MAXNORM_LOSSES)}", self.loss),
            (self.projection in PROJECTIONS, f"projection must be one of {', '.join(PROJECTIONS)}", self.projection),
            (self.batch_size is None or self.batch_size > 0, "batch_size must be > 0", self.batch_size),
        ]
        for ok, message, value in checks:
            if not ok:
                raise ConfigError(f"maxnorm {message}, got {value!r}")


@CALIBRATIONS.register("maxnorm")
class MaxNorm:
    """MaxNorm (Alshammari et al. 2022, "Long-Tailed Recognition via Weight Balancing", the
    second stage): with the backbone frozen (eval mode: its batch-norm statistics do not
    move), re-train fc_cb by SGD with weight decay on a class-balanced loss, and after every
    epoch (or step) project each class's weight row onto the ball of radius
    `min + t (max - min)` of the row norms measured before training; the bias is not
    constrained. Training data: the run's long-tailed training set, the uniform stream of
    glmc's loader with the standard augmentation, seeded by the run's seed.
    """

    Params = MaxNormParams
    linear_only = True

    def __init__(self, params: MaxNormParams) -> None:
        self.params = params

    def __call__(self, model: nn.Module, restored: Restored) -> dict:
        p = self.params
        head = linear_head(model, "maxnorm")
        threshold = max_norm_threshold(head.weight.detach(), p.threshold)
        counts = restored.checkpoint["class_counts"]
        weights = effective_number_weights(counts, p.cb_beta).to(restored.device)  # K
        loader = self._loader(restored)
        model.eval()
        model.requires_grad_(False)
        head.requires_grad_(True)
        optimizer = torch.optim.SGD(head.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        schedule = OptimConfig(lr=p.lr, schedule="cosine")
        losses = []
        for epoch in range(p.epochs):
            set_learning_rate(optimizer, learning_rate(epoch, p.epochs, schedule))
            total = torch.zeros((), device=restored.device)
            for batch in loader.epoch(epoch):
                with torch.no_grad(), autocast(restored.precision, restored.device):
                    feature = model(channels_last(batch.uniform.view1)).feature  # N x d, frozen
                loss = self._loss(head(feature.float()), batch.uniform.labels, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                if p.projection == "step":
                    self._project(head, threshold)
            if p.projection == "epoch":
                self._project(head, threshold)
            losses.append(total / len(loader))
        model.requires_grad_(True)
        return {"threshold": float(threshold), "epoch_losses": [round(v, 6) for v in torch.stack(losses).tolist()]}

    def _loss(self, logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        if self.params.loss == "softmax-bce":
            return class_balanced_softmax_bce(logits, labels, weights)
        return focal_loss(logits, labels, self.params.focal_gamma, weights)

    @staticmethod
    def _project(head: nn.Linear, threshold: Tensor) -> None:
        with torch.no_grad():
            head.weight.copy_(max_norm_projection(head.weight, threshold))

    def _loader(self, restored: Restored) -> TrainingBatches:
        config = restored.config
        return restored.dataset.train_loader(config.data, self.params.batch_size or config.train.batch_size, restored.device,
                                             seed=config.train.seed, drop_last=config.train.drop_last,
                                             spec=BatchSpec(resampled=False, views=(1,)))


# ---------------------------------------------------------------- parameters, and a checkpoint in and out


def calibration_params(name: str, overrides: Sequence[str] = ()) -> Any:
    """The typed parameters of calibration `name`: its defaults, then `key=value` overrides."""
    params_type = CALIBRATIONS.get(name).Params
    hints = typing.get_type_hints(params_type)
    values: dict[str, Any] = {}
    for text in overrides:
        key, raw = parse_override(text)
        if key not in hints:
            raise ConfigError(unknown_name_message(f"{name} parameter", key, sorted(hints)))
        values[key] = coerce(f"{name}.{key}", raw, hints[key])
    return params_type(**values)


def default_output(checkpoint: str | os.PathLike, name: str) -> Path:
    """`runs/x/checkpoint_last.pt` -> `runs/x/checkpoint_last-maxnorm.pt`."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-{name}.pt")


def metrics_path(output: str | os.PathLike) -> Path:
    """The metrics JSON written next to a calibrated checkpoint: same name, `.json`."""
    return Path(output).with_suffix(".json")


def calibrate_checkpoint(
    path: str | os.PathLike,
    name: str,
    overrides: Sequence[str] = (),
    output: str | os.PathLike | None = None,
    data_root: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Apply calibration `name` to the checkpoint at `path`; write the new checkpoint and its
    metrics JSON; return the metrics record (before, after, parameters)."""
    calibration = CALIBRATIONS.get(name)(calibration_params(name, overrides))
    output = Path(output) if output is not None else default_output(path, name)
    report = metrics_path(output)
    if Path(path).resolve() == output.resolve():
        raise GlmcError(f"--output {output} is the checkpoint being calibrated; choose another path")
    if not overwrite and (output.exists() or report.exists()):
        raise GlmcError(f"{output if output.exists() else report} already exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise GlmcError(f"output folder {output.parent} does not exist")
    with writing_into(output):  # a run folder's lease, if output lies in one: no run is being trained there
        return calibrate_into(path, name, calibration, output, report, data_root, device)


def calibrate_into(path: str | os.PathLike, name: str, calibration: Calibration, output: Path, report: Path,
                   data_root: str | None, device: str) -> dict:
    """`calibrate_checkpoint`'s work, its output checked: calibrate, evaluate before and after, write both files."""
    started = time.time()
    restored = restore_for_evaluation(path, data_root, device)
    if calibration.linear_only:
        linear_head(restored.model, name)  # refuse a cosine head before any work
    model = copy.deepcopy(restored.model)
    facts = calibration(model, restored)
    before, after = evaluate_before_and_after(restored, model)

    record = {
        "calibration": name,
        "params": dataclasses.asdict(calibration.params),
        "source": str(path),
        "checkpoint": str(output),
        "method": restored.config.method.name,
        "backbone": restored.checkpoint["backbone"],
        "fingerprint": restored.checkpoint["fingerprint"],
        "before": before.to_json(),
        "after": after.to_json(),
        **facts,
        "seconds": round(time.time() - started, 2),
    }
    payload = {key: value for key, value in restored.checkpoint.items() if key != "format"}
    payload["model"] = model.state_dict()
    payload["logit_scale"] = glmc_heads(model).logit_scale  # restore_model's factor on fc_cb, after the calibration
    payload["kind"] = f"{restored.checkpoint.get('kind', 'checkpoint')}, calibrated with {name}"
    payload["calibrations"] = [*restored.checkpoint.get("calibrations", []), record]
    save_checkpoint(output, payload)
    write_text_atomically(report, json.dumps(record, indent=2) + "\n")
    return record


def evaluate_before_and_after(restored: Restored, calibrated: nn.Module) -> tuple[Metrics, Metrics]:
    """The checkpoint's test metrics and its calibrated copy's; one pass through the encoder where the
    calibration changed the heads only, as glmc's calibrations do."""
    if same_encoder(restored.model, calibrated):
        before, after = evaluate_heads(restored, [restored.model, calibrated])
        return before, after
    return evaluate_restored(restored), evaluate_restored(restored, model=calibrated)


def metrics_line(label: str, metrics: dict) -> str:
    nll = metrics.get("nll")
    return (f"{label:<7} top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  {format_shots(metrics)}  "
            f"ece {format_percent(metrics.get('ece'))}  nll {'-' if nll is None else format(nll, '.3f')}")


def render(record: dict) -> str:
    """Before and after, one line each."""
    params = ", ".join(f"{key}={value}" for key, value in record["params"].items())
    return "\n".join([
        f"{record['calibration']} ({params}) on {record['source']}",
        metrics_line("before", record["before"]),
        metrics_line("after", record["after"]),
        f"wrote {record['checkpoint']} and {metrics_path(record['checkpoint'])}",
    ])


def describe_calibrations() -> str:
    """Every calibration with its parameters and their defaults, for `--help`."""
    lines = []
    for name in CALIBRATIONS.names():
        params = CALIBRATIONS.get(name).Params
        defaults = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(params))
        lines.append(f"{name}: {defaults}")
    return "; ".join(lines)
