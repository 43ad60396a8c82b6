"""The standard ResNet-32 GLMC training step on this CPU: glmc's pipeline and the authors', side by side.

    python benchmarks/cpu_step_vs_authors.py --data-root DIR [--steps 40] [--rounds 2] [--json]

Both run in this one process, one after the other and alternating (`--rounds` of each), on
the real CIFAR-10-LT IF100 training set (standard split), batch 64, the same model (glmc's
standard `resnet32` with its GLMC heads) and the same SGD. Each timed step is a whole
training step, data included, by wall clock; the figure is samples per second (elements
of the uniform batch, 64 per step). The printed ratio is glmc's median over the authors'
median.

- **glmc**: `glmc train`'s own loader and `train_step`, at the precision `train.precision`
  resolves to here (`--precision`, default `auto`).
- **the authors' pipeline** (ynu-yangpeng/GLMC, GLMC-2023/main.py and Trainer.py), written
  again without torchvision, which this CPU build of PyTorch cannot import: a Dataset of
  HWC uint8 images turned into PIL images; per image and view torchvision's
  RandomCrop(32, padding=4) (ImageOps.expand with black, a crop at offsets from
  torch.randint), RandomHorizontalFlip (torch.rand(1) < 0.5, PIL transpose), ToTensor and
  Normalize; `TwoCropTransform` for the two views; two DataLoaders (shuffled, and a
  WeightedRandomSampler with replacement for the re-sampled stream) with persistent
  workers (`--workers` each); then their step: one-hot labels by `scatter_`, the class-
  weighted one-hots, MixUp and an in-place CutMix of the batches, two fp32 forward passes,
  the four soft cross-entropies, SimSiam, backward and SGD.

The script prints, never asserts: speed claims in the README quote its output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from glmc.config import build_config
from glmc.engine import step_rng, train_step
from glmc.machine import OtherWork, machine_description, slowed_by_others
from glmc.precision import resolve_precision
from glmc.provenance import git_commit
from glmc.trainer import build_run

BATCH = 64


# ---------------------------------------------------------------- the authors' pipeline


class AuthorsTrainTransform:
    """RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std), as torchvision runs them on PIL images."""

    def __init__(self, mean, std, size: int = 32, padding: int = 4) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.size, self.padding = size, padding

    def __call__(self, image: Image.Image) -> torch.Tensor:
        padded = ImageOps.expand(image, border=self.padding, fill=0)
        top = int(torch.randint(0, padded.height - self.size + 1, size=(1,)).item())
        left = int(torch.randint(0, padded.width - self.size + 1, size=(1,)).item())
        crop = padded.crop((left, top, left + self.size, top + self.size))
        if torch.rand(1) < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(crop, np.uint8, copy=True)).view(crop.size[1], crop.size[0], 3)
        tensor = pixels.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)
        return tensor.sub_(self.mean).div_(self.std)


class AuthorsCifarLT(Dataset):
    """Their Cifar10Imbanlance: HWC uint8 images, each item two transformed views and its label."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: AuthorsTrainTransform) -> None:
        self.x, self.y, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, item: int):
        image = Image.fromarray(self.x[item])
        return [self.transform(image), self.transform(image)], int(self.y[item])


def authors_loaders(dataset: AuthorsCifarLT, labels: np.ndarray, q: float, workers: int):
    counts = np.bincount(labels)
    class_weight = 1.0 / counts**q
    class_weight = class_weight / class_weight.sum() * len(counts)
    sample_weight = torch.from_numpy(np.array([class_weight[t] for t in labels])).double()
    common = dict(batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0)
    uniform = DataLoader(dataset, shuffle=True, **common)
    weighted = DataLoader(dataset, sampler=WeightedRandomSampler(sample_weight, len(sample_weight), replacement=True), **common)
    return uniform, weighted


def rand_bbox(size, lam):
    width, height = size[2], size[3]
    cut = np.sqrt(1.0 - lam)
    cut_w, cut_h = np.ceil(width * cut).astype(int), np.ceil(height * cut).astype(int)
    cx, cy = np.random.randint(width), np.random.randint(height)
    return (np.clip(cx - cut_w // 2, 0, width), np.clip(cy - cut_h // 2, 0, height),
            np.clip(cx + cut_w // 2, 0, width), np.clip(cy + cut_h // 2, 0, height))


def authors_step(model, optimizer, uniform, resampled, class_weights, num_classes, alpha, gamma):
    (org_1, org_2), target_org = uniform
    (invs_1, invs_2), target_invs = resampled
    invs_1, invs_2 = invs_1[: org_1.size(0)], invs_2[: org_2.size(0)]
    one_hot_org = torch.zeros(target_org.size(0), num_classes).scatter_(1, target_org.view(-1, 1), 1)
    one_hot_org_w = class_weights * one_hot_org
    one_hot_invs = torch.zeros(target_invs.size(0), num_classes).scatter_(1, target_invs.view(-1, 1), 1)[: one_hot_org.size(0)]
    one_hot_invs_w = class_weights * one_hot_invs
    lam = np.random.beta(1.0, 1.0)
    mix_x = lam * org_1 + (1 - lam) * invs_1
    mix_y, mix_y_w = lam * one_hot_org + (1 - lam) * one_hot_invs, lam * one_hot_org_w + (1 - lam) * one_hot_invs_w
    x1, y1, x2, y2 = rand_bbox(org_2.size(), lam)
    org_2[:, :, x1:x2, y1:y2] = invs_2[:, :, x1:x2, y1:y2]
    out_1, out_2 = model(mix_x), model(org_2)
    sim = -F.cosine_similarity(out_1.p, out_2.z.detach(), dim=-1).mean() - F.cosine_similarity(out_2.p, out_1.z.detach(), dim=-1).mean()

    def soft_ce(logits, targets):
        return -torch.mean(torch.sum(F.log_softmax(logits, dim=1) * targets, dim=1))

    balance = soft_ce(out_1.logits_fc, mix_y) + soft_ce(out_2.logits_fc, mix_y)
    rebalance = soft_ce(out_1.logits, mix_y_w) + soft_ce(out_2.logits, mix_y_w)
    loss = alpha * balance + (1 - alpha) * rebalance + gamma * sim
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()  # their loop logs it every step


def time_authors(dataset_lt, config, steps: int, warmup: int, workers: int) -> float:
    from glmc.models import create_model

    images_hwc = np.ascontiguousarray(dataset_lt.train_images.transpose(0, 2, 3, 1))
    labels = dataset_lt.train_labels
    data = AuthorsCifarLT(images_hwc, labels, AuthorsTrainTransform(dataset_lt.mean, dataset_lt.std))
    uniform_loader, weighted_loader = authors_loaders(data, labels, config.train.resample_weighting, workers)
    torch.manual_seed(config.train.seed)
    model = create_model(config.model.backbone, dataset_lt.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), momentum=0.9, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    counts = np.bincount(labels)
    weights = 1.0 / counts**config.method.label_weighting
    class_weights = torch.FloatTensor(weights / weights.sum() * len(counts))
    model.train()

    def batches():
        while True:
            weighted = iter(weighted_loader)
            for uniform in uniform_loader:
                try:
                    resampled = next(weighted)
                except StopIteration:
                    weighted = iter(weighted_loader)
                    resampled = next(weighted)
                yield uniform, resampled

    stream = batches()
    for _ in range(warmup):
        authors_step(model, optimizer, *next(stream), class_weights, dataset_lt.num_classes, 1.0, config.method.consistency_weight)
    started = time.perf_counter()
    for _ in range(steps):
        authors_step(model, optimizer, *next(stream), class_weights, dataset_lt.num_classes, 1.0, config.method.consistency_weight)
    return BATCH * steps / (time.perf_counter() - started)


# ---------------------------------------------------------------- glmc


def time_glmc(config, dataset, steps: int, warmup: int) -> float:
    run = build_run(config, dataset)

    def batches():
        epoch = 0
        while True:
            for step, batch in enumerate(run.loader.epoch(epoch)):
                yield epoch, step, batch
            epoch += 1

    stream = batches()

    def one_step() -> None:
        epoch, step, batch = next(stream)
        parts = train_step(run.step_model, run.method, run.optimizer, batch, epoch, step_rng(config.train.seed, epoch, step))
        return parts

    for _ in range(warmup):
        one_step()
    started = time.perf_counter()
    for _ in range(steps):
        parts = one_step()
    parts["loss"].item()  # wait for the last step
    return BATCH * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("GLMC_CIFAR10_ROOT") or os.environ.get("GLMC_DATA_ROOT", "data"),
                        help="folder holding cifar-10-batches-py/ (default: $GLMC_CIFAR10_ROOT, $GLMC_DATA_ROOT or ./data)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each round (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each pipeline, alternating (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="workers of each of the authors' two DataLoaders (default 2)")
    parser.add_argument("--precision", default="auto", help="glmc's train.precision: auto, bf16 or fp32 (default auto)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another glmc config value")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from glmc.config import parse_override
    from glmc.data.datasets import create_dataset

    overrides = {"data.data_root": args.data_root, "train.device": "cpu", "train.precision": args.precision,
                 **dict(parse_override(text) for text in args.set)}
    config = build_config("cifar10-lt-if100", overrides)
    dataset = create_dataset(config.data)
    glmc_rates, authors_rates = [], []
    other_work = OtherWork.start()  # the authors' loader workers count as this benchmark's own work
    for round_ in range(args.rounds):
        glmc_rates.append(time_glmc(config, dataset, args.steps, args.warmup))
        authors_rates.append(time_authors(dataset, config, args.steps, args.warmup, args.workers))
        print(f"round {round_ + 1}: glmc {glmc_rates[-1]:.1f} samples/s, authors' pipeline {authors_rates[-1]:.1f} samples/s",
              file=sys.stderr, flush=True)
    glmc_median, authors_median = statistics.median(glmc_rates), statistics.median(authors_rates)
    other_share = other_work.share()
    if slowed_by_others(other_share):
        print(f"warning: other work took {100 * other_share:.0f}% of the CPU time during the rounds: the "
              "rates are low, and the ratio may be off", file=sys.stderr)
    result = {
        "glmc_samples_per_s": [round(r, 1) for r in glmc_rates],
        "authors_samples_per_s": [round(r, 1) for r in authors_rates],
        "glmc_median": round(glmc_median, 1),
        "authors_median": round(authors_median, 1),
        "ratio": round(glmc_median / authors_median, 2),
        "precision": resolve_precision(config.train.precision, torch.device("cpu")),
        "backbone": config.model.backbone,
        "batch_size": BATCH,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "authors_workers_per_loader": args.workers,
        "data": f"cifar10-lt IF100 {config.data.split} split ({len(dataset.train_labels)} images), {args.data_root}",
        "threads": torch.get_num_threads(),
        "other_cpu_share": None if other_share is None else round(other_share, 3),
        "torch": torch.__version__,
        "machine": machine_description(),
        "git_commit": git_commit(),
        "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"glmc ({result['precision']})     {glmc_median:7.1f} samples/s  (rounds: {result['glmc_samples_per_s']})")
        print(f"authors' pipeline {authors_median:7.1f} samples/s  (rounds: {result['authors_samples_per_s']}, fp32, "
              f"{args.workers} workers per loader)")
        print(f"ratio             {result['ratio']:.2f}x  (standard ResNet-32, batch {BATCH}, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
