"""Sharpness-aware minimisation: the update by hand, the fall-back at rho = 0, the same
randomness in both passes, batch-norm statistics from the first pass only."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from glmc.config import OptimConfig, build_config
from glmc.data.batch import StreamBatch, TwoStreamBatch
from glmc.engine import train_step
from glmc.optim import create_optimizer
from glmc.errors import ConfigError
from glmc.methods import StepResult, create_method, method_options
from glmc.models.output import GLMCOutput
from glmc.sam import SAM, sam_perturbation

CPU = torch.device("cpu")
N, C, H, W = 4, 2, 5, 6


class TinyModel(nn.Module):
    """A batch-normed linear 'backbone' with the GLMC heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(C * H * W, 6)
        self.norm = nn.BatchNorm1d(6)
        self.fc, self.fc_cb = nn.Linear(6, 3), nn.Linear(6, 3)
        self.projection, self.predictor = nn.Linear(6, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.norm(self.encoder(x.flatten(1))))  # N x 6
        z = self.projection(h)
        return GLMCOutput(logits=self.fc_cb(h), logits_fc=self.fc(h), z=z, p=self.predictor(z), feature=h)


def batch() -> TwoStreamBatch:
    gen = torch.Generator().manual_seed(1)

    def stream(labels):
        return StreamBatch(torch.randn(N, C, H, W, generator=gen), torch.randn(N, C, H, W, generator=gen), torch.tensor(labels))

    return TwoStreamBatch(uniform=stream([0, 2, 1, 0]), resampled=stream([2, 1, 2, 0]))


GLMC = create_method(method_options(), [10, 4, 1], 10)


def step(rho: float, seed: int = 0, method=GLMC) -> tuple[nn.Module, dict]:
    model = TinyModel()
    optimizer = create_optimizer(model, OptimConfig(lr=0.1, weight_decay=5e-3, sam_rho=rho), CPU)
    parts = train_step(model, method, optimizer, batch(), 7, np.random.default_rng(seed))
    return model, parts


def plain_step(seed: int = 0) -> nn.Module:
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    train_step(model, GLMC, optimizer, batch(), 7, np.random.default_rng(seed))
    return model


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_rho_zero_is_exactly_the_base_optimiser():
    optimizer = create_optimizer(TinyModel(), OptimConfig(sam_rho=0.0), CPU)
    assert isinstance(optimizer, torch.optim.SGD)
    assert states_equal(step(0.0)[0], plain_step())


def test_a_sam_wrapper_with_rho_zero_steps_like_its_base():
    model = TinyModel()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3), rho=0.0)
    train_step(model, GLMC, sam, batch(), 7, np.random.default_rng(0))
    assert states_equal(model, plain_step())


def test_rho_changes_the_update_but_not_the_reported_loss():
    sam_model, sam_parts = step(0.05)
    _, plain_parts = step(0.0)
    assert not states_equal(sam_model, plain_step())
    assert sam_parts["loss"].item() == plain_parts["loss"].item()  # the loss at the unperturbed weights


def test_sam_update_equals_a_step_with_the_gradient_at_the_perturbed_weights():
    rho, lr = 0.5, 0.1
    model = TinyModel()
    params = dict(model.named_parameters())

    def loss_of(m):
        m.train()
        return GLMC(m, batch(), 7, np.random.default_rng(3)).loss

    reference = copy.deepcopy(model)
    grads = torch.autograd.grad(loss_of(reference), list(reference.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads):
            p.add_(rho * g / norm)  # w + e(w)
    perturbed_grads = torch.autograd.grad(loss_of(reference), list(reference.parameters()))
    expected = {name: p.detach() - lr * g for (name, p), g in zip(params.items(), perturbed_grads)}

    optimizer = create_optimizer(model, OptimConfig(lr=lr, momentum=0.0, weight_decay=0.0, sam_rho=rho), CPU)
    train_step(model, GLMC, optimizer, batch(), 7, np.random.default_rng(3))
    for name, value in model.named_parameters():
        assert torch.allclose(value, expected[name], atol=1e-6), name


def test_sam_perturbation_has_norm_rho_along_the_gradient():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # ||g|| = 5
    e = sam_perturbation(grads, 0.5)
    assert torch.allclose(e[0], torch.tensor([0.3, 0.0])) and torch.allclose(e[1], torch.tensor([[0.0], [0.4]]))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in sam_perturbation([torch.zeros(3)], 0.5))


class Recording:
    """A method that records its random draws and returns a loss of the heads."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def __call__(self, model, batch, epoch, rng):
        self.draws.append(float(rng.random()))
        out = model(batch.uniform.view1)
        loss = (out.logits**2).mean() * self.draws[-1] + (out.logits_fc**2).mean()
        return StepResult(loss=loss, parts={})


def test_both_passes_see_the_same_randomness_and_the_callers_rng_moves_once():
    method = Recording()
    rng = np.random.default_rng(11)
    model = TinyModel()
    optimizer = create_optimizer(model, OptimConfig(sam_rho=0.05), CPU)
    train_step(model, method, optimizer, batch(), 0, rng)
    assert len(method.draws) == 2 and method.draws[0] == method.draws[1]
    reference = np.random.default_rng(11)
    reference.random()
    assert rng.random() == reference.random()


def test_batch_norm_statistics_come_from_the_first_pass_only():
    sam_model, _ = step(0.5)
    plain = plain_step()
    assert torch.equal(sam_model.norm.running_mean, plain.norm.running_mean)
    assert torch.equal(sam_model.norm.running_var, plain.norm.running_var)
    assert torch.equal(sam_model.norm.num_batches_tracked, plain.norm.num_batches_tracked)  # two forwards: x_g, x_l
    assert sam_model.norm.track_running_stats


def test_sam_checkpoints_are_plain_sgd_state():
    model = TinyModel()
    sam = create_optimizer(model, OptimConfig(sam_rho=0.05), CPU)
    train_step(model, GLMC, sam, batch(), 0, np.random.default_rng(0))
    state = sam.state_dict()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sgd.load_state_dict(state)  # resumable with or without SAM
    assert sam.param_groups is sam.base.param_groups and state["state"]


def test_sam_rho_is_validated():
    assert build_config(None, {"optim.sam_rho": "0.05"}).optim.sam_rho == 0.05
    with pytest.raises(ConfigError, match="optim.sam_rho must be finite and >= 0"):
        build_config(None, {"optim.sam_rho": "-0.1"})
    with pytest.raises(ConfigError, match="optim.sam_rho expects a finite number, got 'inf'"):
        build_config(None, {"optim.sam_rho": "inf"})
