"""Loss terms and training methods against hand computations on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glmc.data.batch import StreamBatch, TwoStreamBatch
from glmc.errors import ConfigError, DataError
from glmc.methods import METHODS, MethodOptions, StepResult, create_method, method_options
from glmc.methods.losses import class_weights, cumulative_alpha, simsiam_loss, soft_cross_entropy
from glmc.mixing import box_area_fraction, cutmix_box, sample_lambda
from glmc.models.output import GLMCOutput

CLASS_COUNTS = [10, 4, 1]
TOTAL_EPOCHS = 10
N, C, H, W = 4, 2, 5, 6


# ---------------------------------------------------------------- loss terms


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    targets = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    # Row 0: softmax [1/2, 1/2] -> -(0.25 + 0.75) log(1/2) = log 2.
    # Row 1: softmax [1/4, 3/4] -> -log(1/4) = 2 log 2.  Mean: 1.5 log 2.
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(1.5 * math.log(2.0))


def test_class_weights_by_hand():
    # tau = 0.5: [4^-0.5, 1^-0.5] = [0.5, 1]; sum 1.5; times K = 2 -> [2/3, 4/3].
    assert torch.allclose(class_weights([4, 1], 0.5), torch.tensor([2 / 3, 4 / 3]))


def test_class_weights_sum_to_k_and_tau_zero_gives_ones():
    counts = [500, 211, 89, 37, 16, 7, 5]
    for tau in (0.5, 1.0, 1.2, 2.0):
        weights = class_weights(counts, tau)
        assert weights.sum().item() == pytest.approx(len(counts), rel=1e-6)
        assert bool((weights[1:] > weights[:-1]).all())  # rarer classes weigh more
    assert torch.equal(class_weights(counts, 0.0), torch.ones(len(counts)))


def test_class_weights_reject_an_empty_class():
    with pytest.raises(DataError):
        class_weights([5, 0, 2], 1.0)


def test_simsiam_loss_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # cos([1, 0], [1, 1]) = 1/sqrt(2); cos([0, 2], [0, -1]) = -1. Loss: -(1/sqrt(2) - 1) / 2.
    assert simsiam_loss(p, z).item() == pytest.approx(-(1 / math.sqrt(2) - 1) / 2)


def test_simsiam_loss_stops_the_gradient_into_z():
    p = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    z = torch.tensor([[0.5, 1.0], [1.0, 1.0]], requires_grad=True)
    simsiam_loss(p, z).backward()
    assert p.grad is not None and bool(p.grad.abs().sum() > 0)
    assert z.grad is None


@pytest.mark.parametrize(
    "epoch, total, alpha", [(0, 200, 1.0), (100, 200, 0.75), (150, 200, 0.4375), (50, 200, 0.9375), (200, 200, 0.0)]
)
def test_cumulative_alpha_schedule(epoch, total, alpha):
    assert cumulative_alpha(epoch, total) == pytest.approx(alpha)


def test_cumulative_alpha_rejects_epochs_outside_the_run():
    with pytest.raises(ValueError):
        cumulative_alpha(11, 10)
    with pytest.raises(ValueError):
        cumulative_alpha(-1, 10)


# ---------------------------------------------------------------- a stand-in model and batch


class TinyGLMCModel(nn.Module):
    """A linear 'backbone' with the four GLMC heads, in float64 for tight comparisons."""

    def __init__(self, num_classes: int = len(CLASS_COUNTS), dim: int = 6, proj_dim: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Linear(C * H * W, dim)
        self.fc = nn.Linear(dim, num_classes)
        self.fc_cb = nn.Linear(dim, num_classes)
        self.projection = nn.Linear(dim, proj_dim)
        self.predictor = nn.Linear(proj_dim, proj_dim)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> GLMCOutput:
        self.inputs.append(x.detach().clone())
        h = torch.tanh(self.encoder(x.flatten(1)))  # N x dim
        z = self.projection(h)  # N x proj_dim
        return GLMCOutput(logits=self.fc_cb(h), logits_fc=self.fc(h), z=z, p=self.predictor(z), feature=h)


def make_model() -> TinyGLMCModel:
    torch.manual_seed(0)
    return TinyGLMCModel().double()


def make_batch() -> TwoStreamBatch:
    gen = torch.Generator().manual_seed(1)

    def stream(labels: list[int]) -> StreamBatch:
        view1 = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
        view2 = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
        return StreamBatch(view1, view2, torch.tensor(labels))

    return TwoStreamBatch(uniform=stream([0, 0, 1, 0]), resampled=stream([2, 1, 2, 0]))


def reference_glmc(model, batch, epoch, seed, beta=1.0, tau=1.2, gamma=1.0, cutmix_label="lambda"):
    """GLMC's loss assembled by hand: explicit pixel loops and plain Python arithmetic."""
    rng = np.random.default_rng(seed)
    lam = float(rng.beta(beta, beta))
    half_h = math.ceil(H * math.sqrt(1 - lam)) // 2
    half_w = math.ceil(W * math.sqrt(1 - lam)) // 2
    cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
    u, r = batch.uniform, batch.resampled

    x_global = lam * u.view1 + (1 - lam) * r.view1
    x_local = u.view2.clone()
    pasted = 0
    for i in range(max(cy - half_h, 0), min(cy + half_h, H)):
        for j in range(max(cx - half_w, 0), min(cx + half_w, W)):
            x_local[:, :, i, j] = r.view2[:, :, i, j]
            pasted += 1
    lam_local = lam if cutmix_label == "lambda" else 1 - pasted / (H * W)

    k = len(CLASS_COUNTS)
    raw = [n**-tau for n in CLASS_COUNTS]
    weight = [k * v / sum(raw) for v in raw]

    def targets(share, weighted):
        rows = [[0.0] * k for _ in range(N)]
        for i in range(N):
            a, b = int(u.labels[i]), int(r.labels[i])
            rows[i][a] += share * (weight[a] if weighted else 1.0)
            rows[i][b] += (1 - share) * (weight[b] if weighted else 1.0)
        return rows

    def xent(logits, rows):
        total = 0.0
        for row_logits, row_targets in zip(logits.tolist(), rows):
            log_norm = math.log(sum(math.exp(v) for v in row_logits))
            total -= sum(t * (v - log_norm) for t, v in zip(row_targets, row_logits))
        return total / N

    def neg_cos(p, z):
        total = 0.0
        for a, b in zip(p.tolist(), z.tolist()):
            dot = sum(x * y for x, y in zip(a, b))
            total -= dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
        return total / N

    with torch.no_grad():
        out_g, out_l = model(x_global), model(x_local)
    ce = xent(out_g.logits_fc, targets(lam, False)) + xent(out_l.logits_fc, targets(lam_local, False))
    cb = xent(out_g.logits, targets(lam, True)) + xent(out_l.logits, targets(lam_local, True))
    sim = neg_cos(out_g.p, out_l.z) + neg_cos(out_l.p, out_g.z)
    alpha = 1 - (epoch / TOTAL_EPOCHS) ** 2
    loss = alpha * ce + (1 - alpha) * cb + gamma * sim
    return {"loss": loss, "ce": ce, "cb": cb, "sim": sim, "alpha": alpha, "lam": lam}


def run_glmc(config: MethodOptions, seed: int, epoch: int = 3) -> StepResult:
    method = create_method(config, CLASS_COUNTS, TOTAL_EPOCHS)
    return method(make_model(), make_batch(), epoch, np.random.default_rng(seed))


def box_for_seed(seed: int, beta: float = 1.0):
    """The (lam, box) the GLMC method draws with this seed: lambda first, then the box."""
    rng = np.random.default_rng(seed)
    lam = sample_lambda(rng, beta)
    return lam, cutmix_box(H, W, lam, rng)


def is_clipped(lam: float, box) -> bool:
    y1, y2, x1, x2 = box
    return (y2 - y1) < 2 * (math.ceil(H * math.sqrt(1 - lam)) // 2) or (x2 - x1) < 2 * (
        math.ceil(W * math.sqrt(1 - lam)) // 2
    )


CLIPPED_SEED = next(s for s in range(200) if is_clipped(*box_for_seed(s)) and 0.2 < box_for_seed(s)[0] < 0.8)


# ---------------------------------------------------------------- the GLMC method


@pytest.mark.parametrize(
    "options, epoch, seed",
    [
        ({}, 0, 0),
        ({}, 3, 1),
        ({"beta": 0.5, "label_weighting": 1.0, "consistency_weight": 4.0}, 7, 2),
        ({"label_weighting": 0.0, "consistency_weight": 0.0}, 9, 3),
        ({"cutmix_label": "area"}, 5, CLIPPED_SEED),
    ],
)
def test_glmc_loss_equals_the_hand_assembled_loss(options, epoch, seed):
    result = run_glmc(method_options(**options), seed, epoch)
    names = {"beta": "beta", "label_weighting": "tau", "consistency_weight": "gamma", "cutmix_label": "cutmix_label"}
    expected = reference_glmc(make_model(), make_batch(), epoch, seed, **{names[k]: v for k, v in options.items()})
    assert result.loss.item() == pytest.approx(expected["loss"], rel=1e-6, abs=1e-9)
    assert set(result.parts) == {"ce", "cb", "sim", "alpha", "lam"}
    for name, part in result.parts.items():
        assert part.dim() == 0 and not part.requires_grad
        assert part.item() == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name


def test_glmc_runs_the_global_batch_then_the_local_batch_without_touching_the_inputs():
    model, batch = make_model(), make_batch()
    before = [t.clone() for s in (batch.uniform, batch.resampled) for t in (s.view1, s.view2)]
    seed = 4
    lam, (y1, y2, x1, x2) = box_for_seed(seed)
    create_method(method_options(), CLASS_COUNTS, TOTAL_EPOCHS)(model, batch, 0, np.random.default_rng(seed))
    after = [t for s in (batch.uniform, batch.resampled) for t in (s.view1, s.view2)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert len(model.inputs) == 2
    x_global, x_local = model.inputs
    assert torch.allclose(x_global, lam * batch.uniform.view1 + (1 - lam) * batch.resampled.view1)
    assert torch.equal(x_local[..., y1:y2, x1:x2], batch.resampled.view2[..., y1:y2, x1:x2])
    outside = torch.ones(H, W, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert torch.equal(x_local[..., outside], batch.uniform.view2[..., outside])


def test_glmc_loss_backpropagates_into_every_head():
    model, batch = make_model(), make_batch()
    method = create_method(method_options(), CLASS_COUNTS, TOTAL_EPOCHS)
    method(model, batch, 5, np.random.default_rng(0)).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_same_seed_gives_identical_loss_and_another_seed_does_not():
    a, b = run_glmc(method_options(), 11), run_glmc(method_options(), 11)
    assert torch.equal(a.loss, b.loss)
    assert all(torch.equal(a.parts[k], b.parts[k]) for k in a.parts)
    assert not torch.equal(a.loss, run_glmc(method_options(), 12).loss)


def test_beta_changes_lambda():
    default, paper = run_glmc(method_options(beta=1.0), 0), run_glmc(method_options(beta=0.5), 0)
    assert default.parts["lam"].item() != paper.parts["lam"].item()
    assert default.loss.item() != paper.loss.item()


def test_label_weighting_changes_only_the_rebalanced_loss():
    low, high = run_glmc(method_options(label_weighting=0.0), 0), run_glmc(method_options(label_weighting=1.2), 0)
    assert low.parts["ce"].item() == high.parts["ce"].item()
    assert low.parts["sim"].item() == high.parts["sim"].item()
    assert low.parts["cb"].item() != pytest.approx(high.parts["cb"].item())
    assert low.loss.item() != pytest.approx(high.loss.item())


def test_consistency_weight_scales_the_similarity_term():
    one, four = run_glmc(method_options(consistency_weight=1.0), 0), run_glmc(method_options(consistency_weight=4.0), 0)
    assert all(torch.equal(one.parts[k], four.parts[k]) for k in one.parts)
    assert (four.loss - one.loss).item() == pytest.approx(3.0 * one.parts["sim"].item())
    assert one.parts["sim"].item() != 0.0


def test_cutmix_label_changes_the_cutmix_target_when_the_box_is_clipped():
    lam, box = box_for_seed(CLIPPED_SEED)
    assert is_clipped(lam, box)
    assert 1 - box_area_fraction(box, H, W) != pytest.approx(lam)
    by_lambda = run_glmc(method_options(cutmix_label="lambda"), CLIPPED_SEED)
    by_area = run_glmc(method_options(cutmix_label="area"), CLIPPED_SEED)
    assert by_lambda.parts["sim"].item() == by_area.parts["sim"].item()  # same images
    assert by_lambda.parts["ce"].item() != pytest.approx(by_area.parts["ce"].item())
    assert by_lambda.parts["cb"].item() != pytest.approx(by_area.parts["cb"].item())


def hand_computed_glmc_loss(model, batch, epoch, seed, tau=1.2, gamma=1.0):
    """GLMC's loss from the paper's formulas in plain torch ops (no glmc loss or mixing code), with a graph."""
    rng = np.random.default_rng(seed)
    lam = float(rng.beta(1.0, 1.0))
    half_h, half_w = math.ceil(H * math.sqrt(1 - lam)) // 2, math.ceil(W * math.sqrt(1 - lam)) // 2
    cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
    y1, y2, x1, x2 = max(cy - half_h, 0), min(cy + half_h, H), max(cx - half_w, 0), min(cx + half_w, W)
    u, r = batch.uniform, batch.resampled
    inside = torch.zeros(H, W, dtype=torch.float64)
    inside[y1:y2, x1:x2] = 1.0
    x_global = lam * u.view1 + (1 - lam) * r.view1
    x_local = (1 - inside) * u.view2 + inside * r.view2
    eye = torch.eye(len(CLASS_COUNTS), dtype=torch.float64)
    counts = torch.tensor(CLASS_COUNTS, dtype=torch.float64)
    weight = counts**-tau / (counts**-tau).sum() * len(CLASS_COUNTS)
    plain = lam * eye[u.labels] + (1 - lam) * eye[r.labels]
    weighted = lam * eye[u.labels] * weight + (1 - lam) * eye[r.labels] * weight

    def xent(logits, targets):
        log_p = logits - torch.log(torch.exp(logits).sum(dim=1, keepdim=True))
        return -(targets * log_p).sum(dim=1).mean()

    def neg_cos(p, z):
        z = z.detach()
        return -((p * z).sum(dim=1) / (p.norm(dim=1) * z.norm(dim=1))).mean()

    out_g, out_l = model(x_global), model(x_local)
    alpha = 1 - (epoch / TOTAL_EPOCHS) ** 2
    ce = xent(out_g.logits_fc, plain) + xent(out_l.logits_fc, plain)
    cb = xent(out_g.logits, weighted) + xent(out_l.logits, weighted)
    return alpha * ce + (1 - alpha) * cb + gamma * (neg_cos(out_g.p, out_l.z) + neg_cos(out_l.p, out_g.z))


def test_one_full_glmc_step_equals_the_hand_computed_sgd_update():
    """Loss, gradients and the SGD step (momentum, weight decay) of train_step against the formulas."""
    from glmc.engine import train_step

    lr, weight_decay, epoch, seed = 0.05, 5e-3, 4, 7
    model, batch = make_model(), make_batch()
    reference = make_model()
    hand_loss = hand_computed_glmc_loss(reference, batch, epoch, seed)
    gradients = torch.autograd.grad(hand_loss, list(reference.parameters()))
    # first SGD step: the momentum buffer is the weight-decayed gradient itself
    expected = [p.detach() - lr * (g + weight_decay * p.detach()) for p, g in zip(reference.parameters(), gradients)]

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    method = create_method(method_options(), CLASS_COUNTS, TOTAL_EPOCHS)
    parts = train_step(model, method, optimizer, batch, epoch, np.random.default_rng(seed))
    # glmc's soft labels and class weights are float32, the rest of this model float64: agreement to ~1e-8
    assert parts["loss"].item() == pytest.approx(hand_loss.item(), rel=1e-6)
    for (name, updated), wanted in zip(model.named_parameters(), expected):
        torch.testing.assert_close(updated.detach(), wanted, rtol=1e-6, atol=1e-8, msg=name)
    assert any(not torch.equal(p.detach(), q.detach()) for p, q in zip(model.parameters(), reference.parameters()))


# ---------------------------------------------------------------- the baseline and the registry


def test_ce_method_equals_cross_entropy_of_the_prediction_head():
    model, batch = make_model(), make_batch()
    result = create_method(method_options("ce"), CLASS_COUNTS, TOTAL_EPOCHS)(
        model, batch, 0, np.random.default_rng(0)
    )
    expected = F.cross_entropy(model(batch.uniform.view1).logits, batch.uniform.labels)
    assert torch.allclose(result.loss, expected)
    assert set(result.parts) == {"ce"} and not result.parts["ce"].requires_grad


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_gives_a_finite_differentiable_loss(name):
    model = make_model()
    method = create_method(method_options(name), CLASS_COUNTS, TOTAL_EPOCHS)
    result = method(model, make_batch(), TOTAL_EPOCHS - 1, np.random.default_rng(0))
    assert isinstance(result, StepResult)
    assert result.loss.dim() == 0 and bool(torch.isfinite(result.loss))
    result.loss.backward()
    assert all(part.dim() == 0 and not part.requires_grad for part in result.parts.values())


@pytest.mark.parametrize(
    "options",
    [
        {"label_weighting": -0.1},
        {"beta": 0.0},
        {"beta": -1.0},
        {"beta": float("nan")},
        {"consistency_weight": -1.0},
        {"cutmix_label": "box"},
    ],
)
def test_bad_config_values_raise_one_line_config_errors(options):
    with pytest.raises(ConfigError) as error:
        method_options(**options)
    assert "\n" not in str(error.value)
    assert next(iter(options)) in str(error.value)


def test_unknown_method_name_names_the_close_matches():
    with pytest.raises(ConfigError, match="'glmc'") as error:
        create_method(method_options("glmcc"), CLASS_COUNTS, TOTAL_EPOCHS)
    assert "\n" not in str(error.value)


def test_non_positive_total_epochs_is_a_config_error():
    with pytest.raises(ConfigError):
        create_method(method_options(), CLASS_COUNTS, 0)


def test_defaults_reproduce_the_authors_code():
    config = method_options()
    assert (config.name, config.beta, config.label_weighting, config.consistency_weight, config.cutmix_label) == (
        "glmc",
        1.0,
        1.2,
        1.0,
        "lambda",
    )
