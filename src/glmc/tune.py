"""`glmc tune --preset P --trials N --output DIR`: hyper-parameters chosen on a validation set, never the test set.

Each trial is a glmc run of the preset with the values Optuna's sampler suggests from the method's
search space (declared beside its options, glmc.methods.base; `--space FILE` changes it), trained
with a validation set held out of the training images (`data.validation=held-out`) and never
tested (`eval.test=false`). Its objective is the validation set's balanced accuracy (the mean
per-class accuracy) at the end; every evaluation is reported, so a pruner can stop a poor trial.

    DIR/study.db     the study (SQLite) unless --storage names another: the same command continues it
    DIR/trials/N/    trial N's run folder (a trial killed mid-way is taken up again from its checkpoint)
    DIR/best.yaml    the preset with the best trial's values and no validation set: glmc train --config DIR/best.yaml
    DIR/report/      optimisation_history.png, param_importances.png, trials.md

Several `glmc tune` commands may share one study (`--storage`: an SQL database, or `journal:FILE`, a
file on a shared file system, for clusters without a database server): each asks the study for the
next trial, so together they run about N (each may finish one trial past N when they end together).
A trial left RUNNING by a process that died (the owner it records is gone, judged as glmc.lock judges a
run folder's holder) is marked failed and queued again with the same values and folder.
"""

from __future__ import annotations

import json
import math
import os
import time
import typing
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt  # no display needed: without one, matplotlib draws with Agg
import numpy as np
import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState
from optuna.visualization import matplotlib as optuna_plots

from glmc import lock
from glmc.config import Config, build_config, deep_merge, flatten, split_key
from glmc.errors import ConfigError, GlmcError, RunInterrupted
from glmc.methods.base import SearchRange, option_types, search_space
from glmc.rundir import MACHINE_KEYS, Resume
from glmc.trainer import train

STUDY_NAME = "glmc-tune"
TRIALS_DIR = "trials"
BEST_FILE = "best.yaml"
REPORT_DIR = "report"
PRUNERS = ("none", "median")
# Fixed by glmc tune: every trial chooses on the validation set and never sees the test set.
TRIAL_VALUES = {"data.validation": "held-out", "eval.test": False}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ---------------------------------------------------------------- the search space


def load_space(method: str, path: str | os.PathLike | None = None) -> dict[str, SearchRange]:
    """Method `method`'s search space, changed by the YAML file at `path`: `KEY: {low, high[, log]}`,
    `KEY: {choices: [...]}`, or `KEY: null` to search it no more; checked (`check_space`)."""
    space = dict(search_space(method))
    if path is not None:
        try:
            entries = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read search space {path}: {str(error).splitlines()[0]}") from None
        if not isinstance(entries, Mapping):
            raise ConfigError(f"search space {path} must map config keys to {{low, high[, log]}}, {{choices}} or null")
        for key, entry in entries.items():
            if entry is None:
                space.pop(str(key), None)
            else:
                space[str(key)] = parse_range(str(key), entry, path)
    check_space(space, method)
    return space


def parse_range(key: str, entry: Any, path: str | os.PathLike) -> SearchRange:
    if not isinstance(entry, Mapping) or not (set(entry) <= {"low", "high", "log", "choices"}) or not entry:
        raise ConfigError(f"search space {path}, {key}: expected {{low, high[, log]}} or {{choices: [...]}}, got {entry!r}")
    if "choices" in entry:
        if set(entry) != {"choices"} or not isinstance(entry["choices"], list) or not entry["choices"]:
            raise ConfigError(f"search space {path}, {key}: choices must be a non-empty list, alone")
        return SearchRange(choices=tuple(entry["choices"]))
    try:
        return SearchRange(float(entry["low"]), float(entry["high"]), bool(entry.get("log", False)))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"search space {path}, {key}: low and high must both be numbers, got {entry!r}") from None


def value_type(key: str, method: str) -> Any:
    """The config type of `key` (a `section.field` key, or one of the method's options)."""
    section, name = split_key(key)
    if section == "method":
        types = option_types(method)
        if name not in types:
            raise ConfigError(f"search space: method {method} has no option {name!r} (its options: {', '.join(types)})")
        return types[name]
    return typing.get_type_hints(type(getattr(Config(), section)))[name]


def check_space(space: Mapping[str, SearchRange], method: str) -> None:
    """Every key is a config key the method has, every range is a range its type can take."""
    for key, where in space.items():
        if key in TRIAL_VALUES:
            raise ConfigError(f"search space: {key} is fixed by glmc tune ({key}={TRIAL_VALUES[key]})")
        kind = value_type(key, method)
        if where.choices is not None:
            continue
        if kind not in (int, float, int | None, float | None):
            raise ConfigError(f"search space: {key} takes {getattr(kind, '__name__', kind)} values; give it choices")
        if not (math.isfinite(where.low) and math.isfinite(where.high) and where.low < where.high):
            raise ConfigError(f"search space: {key} needs finite low < high, got {where.low} .. {where.high}")
        if where.log and where.low <= 0:
            raise ConfigError(f"search space: {key} on a log scale needs low > 0, got {where.low}")
        if kind in (int, int | None) and not (float(where.low).is_integer() and float(where.high).is_integer()):
            raise ConfigError(f"search space: {key} is an integer; low and high must be whole numbers")


def suggest(trial: Trial, key: str, where: SearchRange, method: str) -> Any:
    if where.choices is not None:
        return trial.suggest_categorical(key, list(where.choices))
    if value_type(key, method) in (int, int | None):
        return trial.suggest_int(key, int(where.low), int(where.high), log=where.log)
    return trial.suggest_float(key, where.low, where.high, log=where.log)


# ---------------------------------------------------------------- the study


def open_study(output: Path, storage: str | None, pruner: str, sampler_seed: int | None, epochs: int) -> optuna.Study:
    """The study in `storage` (default: DIR/study.db), created if new."""
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # glmc prints its own line per trial
    return optuna.create_study(study_name=STUDY_NAME, storage=study_storage(output, storage), load_if_exists=True,
                               direction="maximize", sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                               pruner=make_pruner(pruner, epochs))


def study_storage(output: Path, storage: str | None):
    if storage is None:
        return f"sqlite:///{(output / 'study.db').resolve()}"
    if storage.startswith("journal:"):
        return JournalStorage(JournalFileBackend(storage.removeprefix("journal:")))
    return storage


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """`none`, the default: on the quickstart the validation score of epoch 2 ranked 20 GLMC trials against their
    final one with Spearman's rho -0.47, of epoch 6 0.53, of epoch 10 (half-way) 0.88 (results/tune-quickstart):
    GLMC's predicting head trains late (loss weight (T / T_max)^2). `median` therefore waits for half the epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 2)
    return optuna.pruners.NopPruner()


def require_same_study(study: optuna.Study, facts: dict) -> None:
    """A study is of one preset, search space and set of overrides: another is refused, in one line."""
    held = study.user_attrs.get("glmc")
    if held is None:
        study.set_user_attr("glmc", facts)
    elif held != facts:
        differing = sorted(key for key in set(held) | set(facts) if held.get(key) != facts.get(key))
        raise GlmcError(f"the study there differs in {', '.join(differing)} (it tunes {held.get('preset')} with "
                        f"{held.get('overrides')}); use another --output or --storage")


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def folder_number(trial: Trial | FrozenTrial) -> int:
    """The run folder a trial trains in: its own number, or that of the trial it takes up again."""
    return int(trial.user_attrs.get("glmc_folder", trial.number))


def take_up_again(study: optuna.Study, trial: FrozenTrial, why: str, log: Callable[[str], None]) -> None:
    """Mark `trial` failed and queue its values again, for the same folder (which holds its checkpoint)."""
    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, RuntimeError):
        return  # finished meanwhile, or another command took it up first
    study.enqueue_trial(trial.params, user_attrs={"glmc_folder": folder_number(trial)})
    log(f"trial {trial.number} ({why}) queued again, to continue in {TRIALS_DIR}/{folder_number(trial)}")


def take_up_abandoned(study: optuna.Study, output: Path, log: Callable[[str], None]) -> None:
    """Trials RUNNING for a process that is gone (glmc.lock's rules, on the owner the trial records, and no live
    holder of its run folder's lease), taken up again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("glmc_owner")
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0  # Optuna's naive local time
        if owner is None or lock.in_use(output / TRIALS_DIR / str(folder_number(trial))) is not None:
            continue
        holder = lock.Holder(**{key: value for key, value in owner.items() if key in lock.HOLDER_FIELDS})
        renewed = max(started, trial.user_attrs.get("glmc_renewed", 0.0))
        why = lock.gone_because(holder, renewed)
        if why is not None:
            take_up_again(study, trial, f"left running by {holder.describe()}: {why}", log)


# ---------------------------------------------------------------- the trials


def tune(preset: str, trials: int, output: str | os.PathLike, space_file: str | None = None, storage: str | None = None,
         overrides: Mapping[str, Any] | None = None, pruner: str = "none", sampler_seed: int | None = None,
         log: Callable[[str], None] = print) -> optuna.Study:
    """Run the study until it has `trials` finished trials (complete or pruned); write best.yaml and the report."""
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    overrides = dict(overrides or {})
    fixed = sorted(set(overrides) & set(TRIAL_VALUES))
    if fixed:
        raise ConfigError(f"{fixed[0]} is fixed by glmc tune ({fixed[0]}={TRIAL_VALUES[fixed[0]]}); drop it")
    base = build_config(preset, {**overrides, **TRIAL_VALUES})  # a bad preset or override fails before anything is made
    space = load_space(base.method.name, space_file)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    study = open_study(output, storage, pruner, sampler_seed, base.train.epochs)
    identity = {k: v for k, v in overrides.items() if k not in MACHINE_KEYS}
    require_same_study(study, {"preset": preset, "space": {k: asdict(v) for k, v in space.items()},
                               "overrides": json.loads(json.dumps(identity, default=str))})
    while len(finished_trials(study)) < trials:
        take_up_abandoned(study, output, log)
        run_trial(study, preset, overrides, space, base.method.name, output, trials, log)
    write_best(study, preset, overrides, output)
    write_report(study, output)
    return study


def run_trial(study: optuna.Study, preset: str, overrides: Mapping[str, Any], space: Mapping[str, SearchRange],
              method: str, output: Path, trials: int, log: Callable[[str], None]) -> None:
    trial = study.ask()
    trial.set_user_attr("glmc_owner", asdict(lock.this_process("glmc tune")))
    values = {key: suggest(trial, key, where, method) for key, where in space.items()}
    config = build_config(preset, {**overrides, **values, **TRIAL_VALUES})
    folder = output / TRIALS_DIR / str(folder_number(trial))

    def report(record: dict) -> None:
        score = record["val"]["balanced"]
        trial.report(score, step=record["epoch"])
        trial.set_user_attr("glmc_renewed", time.time())  # alive, for take_up_abandoned
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} (validation balanced accuracy {score:.2f})")

    try:
        summary = train(config, folder, resume=Resume.IF_SAME_RUN, quiet=True, on_evaluation=report)
    except optuna.TrialPruned as pruned:
        study.tell(trial, state=TrialState.PRUNED)
        log(f"trial {trial.number} {pruned}; {len(finished_trials(study))} of {trials} finished")
        return
    except lock.FolderInUse as refusal:
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number} not run: {refusal}")
        return
    except (RunInterrupted, KeyboardInterrupt):
        take_up_again(study, study.get_trials(deepcopy=False)[trial.number], "stopped", log)
        raise
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    score = summary["final"]["val"]["balanced"]
    try:
        study.tell(trial, score)
    except (ValueError, RuntimeError):  # another command took this trial for abandoned (a long stall): its copy counts
        log(f"trial {trial.number} finished ({score:.2f}) after another command had queued it again")
        return
    best = study.best_trial
    log(f"trial {trial.number}: validation balanced accuracy {score:.2f} ({describe(values)}); best {best.value:.2f} "
        f"(trial {best.number}); {len(finished_trials(study))} of {trials} finished")


def describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key.split('.', 1)[1]}={value:.4g}" if isinstance(value, float) else f"{key.split('.', 1)[1]}={value}"
                     for key, value in values.items())


# ---------------------------------------------------------------- what a study leaves


def write_best(study: optuna.Study, preset: str, overrides: Mapping[str, Any], output: Path) -> Path | None:
    """DIR/best.yaml: the preset and the best trial's values (with the study's overrides), no validation set."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    typed = flatten(build_config(preset, {**overrides, **best.params}).to_dict())  # "4" from --set is written as 4
    values = deep_merge(nest({key: typed[key] for key in {**overrides, **best.params}}))
    header = (f"# glmc tune --preset {preset}: the best of {len(complete)} complete trials, trial {best.number}\n"
              f"# (validation balanced accuracy {best.value:.2f}). Train it on the whole training set and test it once:\n"
              f"#   glmc train --config {output / BEST_FILE}\n")
    path = output / BEST_FILE
    path.write_text(header + yaml.safe_dump({"preset": preset, "values": values}, sort_keys=False))
    return path


def nest(flat: Mapping[str, Any]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested


def write_report(study: optuna.Study, output: Path) -> Path:
    """DIR/report/: the optimisation history and the parameters' importance (matplotlib), and trials.md."""
    folder = output / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib plots are marked experimental
        figures = [("optimisation_history.png", optuna_plots.plot_optimization_history)]
        if len(complete) >= 2 and study.best_trial.params:
            figures.append(("param_importances.png", optuna_plots.plot_param_importances))
        for name, plot in figures:
            axes = plot(study)
            axes.figure.set_size_inches(8, 5)
            axes.figure.tight_layout()
            axes.figure.savefig(folder / name, dpi=110)
            plt.close(axes.figure)
    (folder / "trials.md").write_text(trials_table(study))
    return folder


def trials_table(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    keys = sorted({key for trial in trials for key in trial.params})
    head = ["trial", "state", "validation balanced accuracy", "last epoch", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trial in trials:
        last = max(trial.intermediate_values, default=None)
        value = trial.value if trial.value is not None else trial.intermediate_values.get(last) if last else None
        cells = [str(trial.number), trial.state.name.lower(), "–" if value is None else f"{value:.2f}", str(last or "–"),
                 *(format(trial.params[k], ".4g") if isinstance(trial.params.get(k), float) else str(trial.params.get(k, "–"))
                   for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rank_agreement(study: optuna.Study) -> dict[int, float]:
    """For each evaluated epoch, Spearman's rank correlation over the complete trials between their validation
    score at that epoch and their final one: how well early evaluations rank trials (what a pruner relies on)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    epochs = sorted(set.intersection(*(set(t.intermediate_values) for t in trials))) if trials else []
    finals = [t.value for t in trials]
    return {epoch: spearman([t.intermediate_values[epoch] for t in trials], finals) for epoch in epochs}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties share their mean rank); NaN if either side is constant."""
    ranked = [average_ranks(np.asarray(values, dtype=float)) for values in (a, b)]
    if any(np.ptp(r) == 0 for r in ranked):
        return float("nan")
    return float(np.corrcoef(*ranked)[0, 1])


def average_ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
