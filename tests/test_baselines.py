"""The baselines and GLMC ablations: their loss terms by hand, their options, and a few
training steps of every registered method on the embedded dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glmc.augment import CifarAugment, Normalise
from glmc.cli import main
from glmc.config import OptimConfig, build_config, load_presets
from glmc.data.batch import StreamBatch, TwoStreamBatch
from glmc.data.datasets import DataConfig, create_dataset
from glmc.data.loader import TwoStreamLoader
from glmc.engine import step_rng, train_step
from glmc.optim import create_optimizer
from glmc.errors import ConfigError
from glmc.methods import METHODS, create_method, method_options
from glmc.methods.losses import (
    class_weights,
    deferred_weights,
    drw_start_epoch,
    effective_number_weights,
    focal_loss,
    ldam_margins,
    log_prior,
    logit_adjusted_cross_entropy,
    margin_lowered,
)
from glmc.mixing import cutmix_box, sample_lambda
from glmc.models import create_model
from glmc.models.heads import CosineLinear, prediction_head
from glmc.models.output import GLMCOutput
from glmc.trainer import train

COUNTS = [10, 4, 1]
EPOCHS = 10
N, C, H, W = 4, 2, 5, 6


# ---------------------------------------------------------------- loss terms by hand


def test_effective_number_weights_by_hand():
    beta = 0.5
    raw = [(1 - beta) / (1 - beta**n) for n in (4, 1)]  # 1/E_n: [0.5 / 0.9375, 1]
    expected = [2 * r / sum(raw) for r in raw]
    assert effective_number_weights([4, 1], beta).tolist() == pytest.approx(expected, rel=1e-6)


def test_effective_number_weights_span_equal_weights_to_inverse_frequency():
    counts = [500, 100, 20, 5]
    assert torch.equal(effective_number_weights(counts, 0.0), torch.ones(4))
    inverse_frequency = class_weights(counts, 1.0)
    assert torch.allclose(effective_number_weights(counts, 1 - 1e-9), inverse_frequency, rtol=1e-3)
    weights = effective_number_weights(counts, 0.9999)
    assert weights.sum().item() == pytest.approx(4.0) and bool((weights[1:] > weights[:-1]).all())


def test_deferred_weights_switch_on_at_the_drw_epoch():
    weights = torch.tensor([0.5, 1.5])
    assert drw_start_epoch(0.8, 200) == 160 and drw_start_epoch(0.8, 10) == 8 and drw_start_epoch(0.0, 10) == 0
    assert deferred_weights(weights, 159, 160) is None
    assert deferred_weights(weights, 160, 160) is weights


def test_balanced_softmax_equals_cross_entropy_when_classes_are_balanced():
    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 1, 0])
    balanced = logit_adjusted_cross_entropy(logits, labels, log_prior([7, 7, 7]), 1.0)
    assert balanced.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_balanced_softmax_by_hand():
    # -log(n_y e^z_y / sum_j n_j e^z_j) with n = [3, 1], z = [0, log 2], y = 1: -log(2 / (3 + 2)) = log 2.5
    logits, labels = torch.tensor([[0.0, math.log(2.0)]]), torch.tensor([1])
    assert logit_adjusted_cross_entropy(logits, labels, log_prior([3, 1]), 1.0).item() == pytest.approx(math.log(2.5))
    # tau = 0 is plain cross-entropy: -log(2 / 3)
    assert logit_adjusted_cross_entropy(logits, labels, log_prior([3, 1]), 0.0).item() == pytest.approx(math.log(1.5))


def test_focal_loss_by_hand_and_gamma_zero_is_cross_entropy():
    logits, labels = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]), torch.tensor([1, 0])
    # p_y = 3/4 and 1/2: mean of (1/4)^2 * -log(3/4) and (1/2)^2 * -log(1/2)
    expected = ((0.25**2) * -math.log(0.75) + (0.5**2) * -math.log(0.5)) / 2
    assert focal_loss(logits, labels, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert focal_loss(logits, labels, 0.0).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    weighted = ((0.25**2) * -math.log(0.75) * 3.0 + (0.5**2) * -math.log(0.5) * 0.5) / 2
    assert focal_loss(logits, labels, 2.0, torch.tensor([0.5, 3.0])).item() == pytest.approx(weighted, rel=1e-6)


def test_ldam_margins_follow_n_to_the_minus_one_quarter():
    counts = [5000, 1000, 81, 16]
    margins = ldam_margins(counts, 0.5)
    products = [m * n**0.25 for m, n in zip(margins.tolist(), counts)]
    assert products == pytest.approx([products[0]] * 4, rel=1e-6)  # Delta_j * n_j^(1/4) = C
    assert margins.max().item() == pytest.approx(0.5) and margins.argmax().item() == 3
    assert margins[2].item() == pytest.approx(0.5 * (16 / 81) ** 0.25)


def test_margin_lowered_by_hand():
    logits, labels, margins = torch.tensor([[6.0, 15.0], [3.0, -9.0]]), torch.tensor([1, 0]), torch.tensor([3.0, 12.0])
    expected = torch.tensor([[6.0, 15.0 - 12.0], [3.0 - 3.0, -9.0]])
    assert torch.equal(margin_lowered(logits, labels, margins), expected)
    assert margin_lowered(logits.bfloat16(), labels, margins).dtype == torch.float32


# ---------------------------------------------------------------- the methods on a stand-in model


class TinyModel(nn.Module):
    """A linear 'backbone' with the GLMC heads, float64; records its inputs. `logit_scale` multiplies
    fc_cb's outputs, as `GLMCHeads` does for a method whose options ask for it."""

    def __init__(self, classifier: type[nn.Module] = nn.Linear, logit_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(C * H * W, 6)
        self.fc, self.fc_cb = nn.Linear(6, len(COUNTS)), classifier(6, len(COUNTS))
        self.projection, self.predictor = nn.Linear(6, 4), nn.Linear(4, 4)
        self.logit_scale = logit_scale
        self.inputs: list[torch.Tensor] = []
        self.double()

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        h = torch.tanh(self.encoder(x.flatten(1)))  # N x 6
        z = self.projection(h)
        return GLMCOutput(logits=self.logit_scale * self.fc_cb(h), logits_fc=self.fc(h), z=z, p=self.predictor(z), feature=h)


def tiny_batch() -> TwoStreamBatch:
    gen = torch.Generator().manual_seed(1)

    def stream(labels):
        return StreamBatch(*(torch.randn(N, C, H, W, generator=gen, dtype=torch.float64) for _ in range(2)), torch.tensor(labels))

    return TwoStreamBatch(uniform=stream([0, 2, 1, 0]), resampled=stream([2, 1, 2, 0]))


def run(name: str, epoch: int = 3, seed: int = 0, model: nn.Module | None = None, **options):
    model = model or TinyModel()
    result = create_method(method_options(name, **options), COUNTS, EPOCHS)(model, tiny_batch(), epoch, np.random.default_rng(seed))
    return result, model


def uniform_logits(model: nn.Module) -> torch.Tensor:
    return model(tiny_batch().uniform.view1).logits


def test_cb_is_weighted_cross_entropy_of_the_prediction_head():
    result, model = run("cb")
    weights = effective_number_weights(COUNTS, 0.9999).double()
    expected = F.cross_entropy(uniform_logits(model), tiny_batch().uniform.labels, weight=weights)
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert run("cb", cb_beta=0.5)[0].loss.item() != pytest.approx(result.loss.item())


@pytest.mark.parametrize("name", ["drw", "ldam-drw"])
def test_drw_switches_the_weights_on_at_drw_start(name):
    # drw_start 0.5 of 10 epochs: epoch 5. Before it the loss is unweighted, from it weighted.
    before, _ = run(name, epoch=4, drw_start=0.5)
    after, _ = run(name, epoch=5, drw_start=0.5)
    unweighted, _ = run(name, epoch=5, drw_start=0.6)
    assert (before.parts["drw"].item(), after.parts["drw"].item(), unweighted.parts["drw"].item()) == (0.0, 1.0, 0.0)
    assert before.loss.item() == pytest.approx(unweighted.loss.item(), rel=1e-12)  # the epoch alone changes nothing
    assert after.loss.item() != pytest.approx(unweighted.loss.item())


def test_drw_equals_cross_entropy_then_class_balanced():
    model, labels = TinyModel(), tiny_batch().uniform.labels
    logits = uniform_logits(model)
    assert run("drw", epoch=0)[0].loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-9)
    weights = effective_number_weights(COUNTS, 0.9999).double()
    late = run("drw", epoch=EPOCHS - 1)[0].loss.item()
    assert late == pytest.approx(F.cross_entropy(logits, labels, weight=weights).item(), rel=1e-9)


def test_ldam_loss_by_hand_and_its_options():
    model = TinyModel(CosineLinear, logit_scale=30.0)
    result, _ = run("ldam-drw", epoch=0, model=model)
    cosines = uniform_logits(model) / 30  # N x K
    assert bool((cosines.abs() <= 1 + 1e-9).all())
    labels = tiny_batch().uniform.labels
    margins = [0.5 * (1 / n) ** 0.25 / (1 / min(COUNTS)) ** 0.25 for n in COUNTS]
    adjusted = cosines.detach().clone()
    for i, y in enumerate(labels.tolist()):
        adjusted[i, y] -= margins[y]
    assert result.loss.item() == pytest.approx(F.cross_entropy(30 * adjusted, labels).item(), rel=1e-6)
    assert method_options("ldam-drw", ldam_scale=10.0).logit_scale == 10.0 and method_options("drw").logit_scale == 1.0
    rescaled = run("ldam-drw", epoch=0, model=TinyModel(CosineLinear, logit_scale=10.0), ldam_scale=10.0)[0].loss.item()
    assert rescaled == pytest.approx(F.cross_entropy(10 * adjusted, labels).item(), rel=1e-6)
    smaller = run("ldam-drw", epoch=0, model=TinyModel(CosineLinear, logit_scale=30.0), ldam_max_margin=0.1)[0].loss.item()
    assert smaller != pytest.approx(result.loss.item())


def test_balanced_softmax_method_and_its_tau():
    result, model = run("balanced-softmax")
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    expected = F.cross_entropy(uniform_logits(model) + prior.log(), tiny_batch().uniform.labels)
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = run("balanced-softmax", logit_adjust_tau=0.0)[0]
    assert plain.loss.item() == pytest.approx(run("ce")[0].loss.item(), rel=1e-9)


def test_focal_method_and_its_gamma():
    assert run("focal", focal_gamma=0.0)[0].loss.item() == pytest.approx(run("ce")[0].loss.item(), rel=1e-9)
    assert run("focal", focal_gamma=2.0)[0].loss.item() < run("focal", focal_gamma=1.0)[0].loss.item()


def test_mixup_mixes_the_uniform_batch_with_a_permutation_of_itself():
    seed = 3
    result, model = run("mixup", seed=seed)
    rng = np.random.default_rng(seed)
    lam, partner = float(rng.beta(1.0, 1.0)), torch.from_numpy(rng.permutation(N))
    x, labels = tiny_batch().uniform.view1, tiny_batch().uniform.labels
    assert torch.allclose(model.inputs[0], lam * x + (1 - lam) * x[partner])
    log_p = F.log_softmax(model(model.inputs[0]).logits, dim=1)
    expected = -(lam * log_p[torch.arange(N), labels] + (1 - lam) * log_p[torch.arange(N), labels[partner]]).mean()
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)  # soft labels are float32
    assert result.parts["lam"].item() == pytest.approx(lam)
    assert run("mixup", seed=seed, beta=0.2)[0].parts["lam"].item() != pytest.approx(lam)


def clipped_seed() -> int:
    for seed in range(200):
        rng = np.random.default_rng(seed)
        lam = sample_lambda(rng, 1.0)
        y1, y2, x1, x2 = cutmix_box(H, W, lam, rng)
        if 0.2 < lam < 0.8 and abs((1 - (y2 - y1) * (x2 - x1) / (H * W)) - lam) > 0.05:
            return seed
    raise AssertionError("no seed clips the box")


def test_cutmix_pastes_a_box_of_the_partner_and_its_label_option():
    seed = clipped_seed()
    by_lambda, model = run("cutmix", seed=seed)
    rng = np.random.default_rng(seed)
    lam = sample_lambda(rng, 1.0)
    y1, y2, x1, x2 = cutmix_box(H, W, lam, rng)
    partner = torch.from_numpy(rng.permutation(N))
    x = tiny_batch().uniform.view1
    assert torch.equal(model.inputs[0][..., y1:y2, x1:x2], x[partner][..., y1:y2, x1:x2])
    assert by_lambda.parts["lam"].item() == pytest.approx(lam)
    by_area = run("cutmix", seed=seed, cutmix_label="area")[0]
    assert by_area.parts["lam"].item() == pytest.approx(1 - (y2 - y1) * (x2 - x1) / (H * W))
    assert by_area.loss.item() != pytest.approx(by_lambda.loss.item())


# ---------------------------------------------------------------- the GLMC ablations


def test_no_consistency_is_glmc_minus_the_consistency_term():
    full, _ = run("glmc", seed=5, consistency_weight=2.0)
    ablated, _ = run("glmc-no-consistency", seed=5, consistency_weight=2.0)
    assert "sim" not in ablated.parts
    assert ablated.loss.item() == pytest.approx(full.loss.item() - 2.0 * full.parts["sim"].item(), rel=1e-9)


def test_no_cumulative_fixes_alpha_at_one_and_trains_the_prediction_head():
    result, model = run("glmc-no-cumulative", epoch=EPOCHS - 1)
    assert result.parts["alpha"].item() == 1.0 and "cb" not in result.parts
    result.loss.backward()
    assert model.fc.weight.grad is None  # the plain classifier is unused
    assert model.fc_cb.weight.grad.abs().sum() > 0  # L_CE trains the head that predicts
    assert result.loss.item() == pytest.approx(result.parts["ce"].item() + result.parts["sim"].item(), rel=1e-9)


@pytest.mark.parametrize("name, branch", [("glmc-global-only", 0), ("glmc-local-only", 1)])
def test_single_branch_ablations_use_one_of_glmc_batches(name, branch):
    _, full_model = run("glmc", seed=7)
    result, model = run(name, seed=7)
    assert len(model.inputs) == 1 and torch.equal(model.inputs[0], full_model.inputs[branch])
    assert "sim" not in result.parts and {"ce", "cb", "alpha", "lam"} <= set(result.parts)


# ---------------------------------------------------------------- options and config


@pytest.mark.parametrize(
    "name, options",
    [("cb", {"cb_beta": 1.0}), ("drw", {"cb_beta": -0.1}), ("drw", {"drw_start": 1.5}), ("focal", {"focal_gamma": -1.0}),
     ("ldam-drw", {"ldam_max_margin": -0.5}), ("ldam-drw", {"ldam_scale": 0.0}),
     ("balanced-softmax", {"logit_adjust_tau": -1.0}), ("balanced-softmax", {"logit_adjust_tau": float("nan")})],
)
def test_bad_baseline_options_are_one_line_config_errors(name, options):
    with pytest.raises(ConfigError) as error:
        method_options(name, **options)
    assert "\n" not in str(error.value) and next(iter(options)) in str(error.value)


def test_defaults_are_the_papers():
    assert (method_options("cb").cb_beta, method_options("drw").drw_start, method_options("focal").focal_gamma) == (0.9999, 0.8, 1.0)
    ldam = method_options("ldam-drw")
    assert (ldam.ldam_max_margin, ldam.ldam_scale, ldam.cb_beta, method_options("balanced-softmax").logit_adjust_tau) == (
        0.5, 30.0, 0.9999, 1.0)


def test_ldam_drw_needs_the_cosine_classifier_and_a_bad_classifier_is_refused():
    with pytest.raises(ConfigError, match="needs model.classifier=cosine"):
        build_config(None, {"method.name": "ldam-drw"})
    with pytest.raises(ConfigError, match="unknown classifier 'cosin'; did you mean 'cosine'"):
        build_config(None, {"model.classifier": "cosin"})


def test_cosine_classifier_is_a_normalised_head_without_bias():
    model = create_model("resnet8", 10, classifier="cosine")
    head = prediction_head(model)
    assert isinstance(head, CosineLinear) and head.bias is None
    logits = model(torch.randn(3, 3, 32, 32)).logits
    assert bool((logits.abs() <= 1 + 1e-5).all())
    assert create_model("resnet8", 10).heads.fc_cb.bias is not None


SETTINGS = ["cifar10-lt-if100", "cifar10-lt-if50", "cifar10-lt-if10", "cifar100-lt-if100", "cifar100-lt-if50", "cifar100-lt-if10"]
BASELINES = ["ce", "cb", "drw", "ldam-drw", "balanced-softmax", "focal", "mixup", "cutmix"]
ABLATIONS = ["glmc-no-consistency", "glmc-no-cumulative", "glmc-global-only", "glmc-local-only"]


@pytest.mark.parametrize("setting", SETTINGS)
def test_method_presets_share_the_glmc_preset_budget(setting):
    glmc = build_config(setting)
    for name in BASELINES + ABLATIONS:
        config = build_config(f"{setting}-{name}")
        assert config.method.name == name
        assert (config.data, config.optim, config.train, config.model.backbone) == (glmc.data, glmc.optim, glmc.train, "resnet32")
        if name in ABLATIONS:
            assert (config.method.label_weighting, config.method.consistency_weight) == (
                glmc.method.label_weighting, glmc.method.consistency_weight)
    assert build_config(f"{setting}-ldam-drw").model.classifier == "cosine"
    assert build_config(f"{setting}-cutmix").method.cutmix_label == "area"


def test_every_registered_method_but_glmc_has_presets():
    presets = load_presets()
    assert sorted(BASELINES + ABLATIONS + ["glmc"]) == METHODS.names()
    for method in BASELINES + ABLATIONS:
        assert all(f"{setting}-{method}" in presets for setting in SETTINGS)


# ---------------------------------------------------------------- every method trains on the embedded dataset


@pytest.fixture(scope="module")
def embedded():
    dataset = create_dataset(DataConfig(dataset="synthetic-lt", imbalance_factor=10))
    normalise = Normalise(dataset.mean, dataset.std)
    loader = TwoStreamLoader(torch.from_numpy(dataset.train_images), torch.from_numpy(dataset.train_labels),
                             dataset.class_counts, 16, CifarAugment(normalise), seed=0)
    return dataset, [batch for _, batch in zip(range(2), loader.epoch(0))]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_trains_its_prediction_head_on_the_embedded_dataset(name, embedded):
    dataset, batches = embedded
    classifier = getattr(METHODS.get(name), "required_classifier", None) or "linear"
    torch.manual_seed(0)
    model = create_model("resnet8", dataset.num_classes, classifier=classifier)
    method = create_method(method_options(name), dataset.class_counts, EPOCHS)
    optimizer = create_optimizer(model, OptimConfig(lr=0.05, weight_decay=0.0), torch.device("cpu"))
    head = prediction_head(model).weight
    start = head.detach().clone()
    losses = []
    for step, batch in enumerate(batches):  # a late epoch: DRW on, GLMC's alpha small
        parts = train_step(model, method, optimizer, batch, EPOCHS - 1, step_rng(0, EPOCHS - 1, step))
        losses.append(parts["loss"].item())
    assert all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(head, start)  # the head evaluation uses has been trained


def test_an_ldam_drw_run_evaluates_with_its_cosine_classifier(tmp_path, capsys):
    config = build_config(None, {"data.dataset": "synthetic-lt", "model.backbone": "resnet8", "train.epochs": "2",
                                 "train.device": "cpu", "train.max_steps": "3", "method.name": "ldam-drw",
                                 "model.classifier": "cosine"})
    summary = train(config, tmp_path, quiet=True)
    assert main(["eval", str(tmp_path / "checkpoint_last.pt"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(summary["final"]["top1"])
