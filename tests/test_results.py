"""Every committed result's weights re-evaluated on this CPU: the recorded top-1 holds to 0.05 points.

A committed run under results/ carries its final weights as fp16 safetensors and, beside them,
`<weights>-eval.json`: the top-1 of that very file evaluated in fp32 where it was made (a GPU for
the campaign, this CPU for the CPU runs). Skipped without the real CIFAR-10. A run's final weights
and their calibrations differ in their heads only, so they share one pass of the test set through
their encoder (`glmc.evaluation.evaluate_heads`, which gives each the metrics `glmc eval` gives it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmc.checkpoint import load_checkpoint
from glmc.evaluation import evaluate_heads, restore_for_evaluation, restore_model, same_encoder
from glmc.metrics import Metrics
from glmc.rundir import RunFolder, load_run
from glmc.weights import COMPACT_SUFFIX, evaluation_path

RESULTS = Path(__file__).resolve().parents[1] / "results"
EVALUATIONS = sorted(RESULTS.rglob("*-eval.json"))


def test_every_committed_weights_file_has_its_evaluation():
    for weights in RESULTS.rglob("*" + COMPACT_SUFFIX):
        assert evaluation_path(weights).is_file(), weights


def weights_of(evaluation: Path) -> Path:
    return evaluation.with_name(json.loads(evaluation.read_text())["weights"])


@pytest.fixture(scope="module")
def reevaluated(cifar10_root):
    """The test metrics of a committed weights file, evaluated on this CPU. The weights files of one
    folder that share their encoder and config (a run's final weights and their calibrations, which
    change the heads only) are evaluated together, the test set through the encoder once."""
    metrics: dict[Path, Metrics] = {}

    def of(weights: Path) -> Metrics:
        if weights not in metrics:
            restored = restore_for_evaluation(weights, data_root=str(cifar10_root), device="cpu")
            siblings = [other for other in map(weights_of, EVALUATIONS) if other.parent == weights.parent and other != weights]
            together = {weights: restored.model}
            for other in siblings:
                checkpoint = load_checkpoint(other)
                model = restore_model(checkpoint, other, restored.device)
                if checkpoint["config"] == restored.checkpoint["config"] and same_encoder(restored.model, model):
                    together[other] = model
            metrics.update(zip(together, evaluate_heads(restored, list(together.values()))))
        return metrics[weights]

    return of


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("evaluation", EVALUATIONS, ids=[str(p.relative_to(RESULTS)) for p in EVALUATIONS])
def test_committed_weights_reproduce_their_recorded_top1_on_the_cpu(evaluation, reevaluated):
    recorded = json.loads(evaluation.read_text())
    weights = weights_of(evaluation)
    dataset = load_checkpoint(weights)["config"]["data"]["dataset"]
    if dataset != "cifar10-lt":
        pytest.skip(f"{weights} was trained on {dataset}; only CIFAR-10 is here")
    assert reevaluated(weights).top1 == pytest.approx(recorded["top1"], abs=0.05)


RUN_FOLDERS = sorted(path.parent for path in RESULTS.rglob("config.yaml"))


@pytest.mark.parametrize("folder", RUN_FOLDERS, ids=[str(p.relative_to(RESULTS)) for p in RUN_FOLDERS])
def test_every_committed_run_folder_still_reads(folder):
    """Configs, records and summaries of every committed run, whichever glmc wrote them, read as this version
    reads a run folder (glmc compare, report and reproduce read them so)."""
    config = RunFolder(folder).read_config()
    assert config.method.name and config.model.backbone
    if (folder / "summary.json").is_file():
        run = load_run(folder)
        assert run.records and run.summary["final"]["epoch"] == run.records[-1]["epoch"]
