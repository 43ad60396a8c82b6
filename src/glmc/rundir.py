"""The run folder: its file names, and every read and write of them.

    config.yaml         the resolved config            classes.txt   `id<TAB>name` per class
    metrics.jsonl       one record per evaluation      summary.json  final and best metrics, the run's facts
    checkpoint_last.pt  the state to resume from       checkpoint_best.pt  the test-selected best epoch
    sessions.jsonl      one line per `glmc train` that worked on the run: when, where, with which
                        code, from which step to which, and how it ended
    lock.json           while a process writes the folder: who (glmc.lock)
    tensorboard/        with --tensorboard             report/       written by `glmc report`

Training writes through `RunFolder` (only rank 0 under torchrun), which holds the folder's lease
(glmc.lock) from `prepare` to `release` and checks it before every write; the other commands
that write into a run folder hold it with `writing_into`. `glmc compare`, `glmc report` and
`glmc reproduce` read a finished run with `load_run`, which needs no lease. Checkpoint payloads
are glmc.checkpoint's; this module only names their files.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import yaml

from glmc import lock
from glmc.checkpoint import previous_path, save_checkpoint, saved_files, warn
from glmc.files import disk_problem, leftover_temporaries, write_text_atomically
from glmc.machine import OtherWork
from glmc.config import Config, dump_config, flatten, stored_config
from glmc.errors import ConfigError, GlmcError, RunInterrupted

CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.txt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SESSIONS_FILE = "sessions.jsonl"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
TENSORBOARD_DIR = "tensorboard"
REPORT_DIR = "report"
BEST_LABEL = "best epoch, selected on the test set"
BEST_ON_VALIDATION_LABEL = "best epoch, selected on the validation set"  # runs with data.validation=held-out
# The run's records: every file but the checkpoints, small enough to commit with a result.
RECORD_FILES = (CONFIG_FILE, CLASSES_FILE, METRICS_FILE, SUMMARY_FILE, SESSIONS_FILE)
# What may differ between the machines (or restarts) a run is continued on: where and how it reads its data, and
# torch.compile, which computes the same step (tests/test_bench.py) in every mode.
MACHINE_KEYS = ("data.data_root", "data.download", "data.workers", "train.device", "train.compile",
                "train.compile_mode")
# When a run saves and how often and in what batches it is evaluated: none of them changes what it trains.
CADENCE_KEYS = ("train.checkpoint_every", "train.checkpoint_minutes", "train.eval_every", "train.eval_last_epochs",
                "train.eval_batch_size")
# What `glmc train --resume` may change on top of the run's config: the machine's keys, the precision its CPU or
# GPU supports, where to stop, and the cadence. Anything else would make one run of two recipes.
RESUME_KEYS = (*MACHINE_KEYS, "train.precision", "eval.precision", "eval.interim_precision", "train.max_steps",
               *CADENCE_KEYS)


class Resume(enum.Enum):
    """What `glmc train` does with a run its output folder already holds."""

    NEVER = "never"  # start a run: a folder holding one is refused, unless it is to be overwritten
    ALWAYS = "always"  # continue the run the folder holds (--resume): a folder without one is refused
    IF_SAME_RUN = "if-same-run"  # continue it if it is this very run, else start one (--resume-if-exists)


class RunFolder:
    """A run folder being written: by `glmc train`, from its first checks to its summary."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lease: lock.Lease | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.path / BEST_CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.exists() or previous_path(self.last_checkpoint).exists()

    def holds_run(self) -> bool:
        return (self.path / CONFIG_FILE).exists() or self.has_checkpoint()

    def check_writable(self, resume: Resume, overwrite: bool, config: Config) -> bool:
        """What `prepare` would refuse, refused now without writing anything (a live writer, a run that is
        not to be replaced or resumed); returns whether the run is to be resumed."""
        refusal = lock.in_use(self.path)
        if refusal is not None:
            raise refusal
        return self.resumes(resume, overwrite, config)

    def resumes(self, resume: Resume, overwrite: bool, config: Config) -> bool:
        """Whether training continues the run the folder holds (see `Resume`); refuses what `resume` rules out."""
        if not isinstance(resume, Resume):  # True or None from a caller of the old signature must not start over
            raise TypeError(f"resume must be a glmc.rundir.Resume, got {resume!r}")
        holds_run = self.holds_run()
        if resume is Resume.IF_SAME_RUN:
            if holds_run:
                self.require_same_run(config)  # a run of another config is refused
            return holds_run
        if resume is Resume.ALWAYS and not holds_run:
            raise GlmcError(f"nothing to resume in {self.path}: no {CONFIG_FILE} or {LAST_CHECKPOINT}")
        if holds_run and resume is Resume.NEVER and not overwrite:
            raise GlmcError(f"{self.path} already holds a run; pass --resume to continue it or --overwrite to replace it")
        return resume is Resume.ALWAYS

    def prepare(self, resume: Resume, overwrite: bool, config: Config, command: str = "") -> bool:
        """Create the folder and take its lease, refusing to replace a run unless asked; `overwrite` clears the
        old run's files. Returns whether the run is resumed (`resumes`, decided under the lease)."""
        if resume is Resume.ALWAYS:
            self.resumes(resume, overwrite, config)  # nothing to resume: refused before the folder is made
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise GlmcError(f"cannot create output folder {self.path}: {error.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise GlmcError(f"output folder {self.path} is not writable")
        self.lease = lock.take(self.path, command)
        try:
            resumes = self.resumes(resume, overwrite, config)
        except BaseException:
            self.release()
            raise
        self.remove_leftovers()
        if overwrite and not resumes:
            for name in (METRICS_FILE, SUMMARY_FILE, SESSIONS_FILE, LAST_CHECKPOINT, BEST_CHECKPOINT):
                for path in saved_files(self.path / name):
                    path.unlink(missing_ok=True)
        return resumes

    def remove_leftovers(self) -> None:
        """Delete the temporary files of a writer that was killed mid-save (SIGKILL, a power cut): a checkpoint's
        can be large (60 MB for the wide ResNet-32), and nothing else would ever remove them."""
        removed, freed = 0, 0
        for name in (*RECORD_FILES, LAST_CHECKPOINT, BEST_CHECKPOINT):
            for leftover in leftover_temporaries(self.path / name):
                try:
                    size = leftover.stat().st_size
                    leftover.unlink()
                except OSError:
                    continue
                removed, freed = removed + 1, freed + size
        if removed:
            warn(f"removed {removed} temporary file(s) ({freed / 1e6:.1f} MB) that an interrupted save left in {self.path}")

    def release(self) -> None:
        """Give the folder's lease back (a no-op where this process holds none)."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def check_lease(self) -> None:
        """Before a write: `LostLease` if another process has taken the folder over."""
        if self.lease is not None:
            self.lease.check()

    def read_config(self, overrides: Mapping | None = None) -> Config:
        """The run's config (from any glmc version), with `overrides` of RESUME_KEYS on top."""
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise GlmcError(f"{self.path} holds no run to resume ({CONFIG_FILE} missing)")
        recipe = sorted(key for key in flatten(overrides or {}) if key not in RESUME_KEYS)
        if recipe:
            raise ConfigError(f"a resumed run keeps its recipe, so {', '.join(recipe)} cannot change (only "
                              f"{', '.join(RESUME_KEYS)}); to train it otherwise, start a new run: glmc train --config "
                              f"{path} --set KEY=VALUE --output NEW_DIR")
        return stored_config(yaml.safe_load(path.read_text()), overrides)

    def require_same_run(self, config: Config) -> None:
        """Refuse, in one line, a folder that holds a run of another config (machine-specific keys aside)."""
        held = {k: v for k, v in flatten(self.read_config().to_dict()).items() if k not in MACHINE_KEYS}
        wanted = {k: v for k, v in flatten(config.to_dict()).items() if k not in MACHINE_KEYS}
        if held != wanted:
            differing = sorted(key for key in set(held) | set(wanted) if held.get(key) != wanted.get(key))
            raise GlmcError(f"{self.path} holds another run (it differs in {', '.join(differing[:4])}); "
                            "move it away or choose another output folder")

    def write_config(self, config: Config) -> None:
        self.check_lease()
        write_text_atomically(self.path / CONFIG_FILE, dump_config(config))

    def write_classes(self, class_names: list[str]) -> None:
        self.check_lease()
        write_text_atomically(self.path / CLASSES_FILE, "".join(f"{k}\t{name}\n" for k, name in enumerate(class_names)))

    def rewrite_records(self, records: list[dict]) -> None:
        """metrics.jsonl holds exactly `records` (a resumed run drops any written after its checkpoint)."""
        self.check_lease()
        write_text_atomically(self.path / METRICS_FILE, jsonl(records))

    def append_record(self, record: dict) -> None:
        self.check_lease()
        try:
            with open(self.path / METRICS_FILE, "a") as file:
                file.write(json.dumps(record) + "\n")
        except OSError as error:
            raise GlmcError(f"{disk_problem(error)} while appending to {self.path / METRICS_FILE}") from None

    def holds_summary(self) -> bool:
        return (self.path / SUMMARY_FILE).is_file()

    def read_summary(self) -> dict:
        return read_json(self.path / SUMMARY_FILE)

    def write_summary(self, summary: dict) -> None:
        self.check_lease()
        write_text_atomically(self.path / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    def begin_session(self, session: dict) -> None:
        """Add this `glmc train` to sessions.jsonl, numbered after the earlier ones. A session that
        never ends (a SIGKILL, a lost machine) keeps this line alone: its gap shows in the file."""
        self.check_lease()
        sessions = self.read_sessions()
        write_text_atomically(self.path / SESSIONS_FILE, jsonl(sessions + [{"session": len(sessions) + 1, **session}]))

    def end_session(self, ending: dict) -> None:
        """Complete the last line of sessions.jsonl, begun by `begin_session`."""
        self.check_lease()
        sessions = self.read_sessions()
        write_text_atomically(self.path / SESSIONS_FILE, jsonl(sessions[:-1] + [{**sessions[-1], **ending}]))

    @contextlib.contextmanager
    def session(self, facts: dict, reached: Callable[[], dict], writes: bool = True,
                work_root: int | None = None) -> Iterator[None]:
        """This `glmc train` in sessions.jsonl around the work it does: begun with `facts` (when, where, with
        which code, from where), ended with how it ended, `reached()`, where the run's last checkpoint then
        stands, and the share of the CPU time other work took meanwhile (the process `work_root`,
        default this one, and its descendants being the run's own). `writes` False (a torchrun rank other than
        0) records nothing."""
        started, other_work = time.time(), OtherWork.start(work_root)
        if writes:
            self.begin_session({"started": utc(started), **facts})
        try:
            yield
        except BaseException as error:
            if writes:
                with contextlib.suppress(GlmcError):  # a full disk is already the error being raised
                    self.end_session(session_ending(started, reached(), error, other_work.share()))
            raise
        if writes:
            self.end_session(session_ending(started, reached(), None, other_work.share()))

    def save_last(self, payload: dict) -> None:
        """checkpoint_last.pt, the one it replaces kept as checkpoint_last.pt.prev."""
        self.check_lease()
        save_checkpoint(self.last_checkpoint, payload, keep_previous=True)

    def save_best(self, payload: dict) -> None:
        self.check_lease()
        save_checkpoint(self.best_checkpoint, payload)

    def read_sessions(self) -> list[dict]:
        path = self.path / SESSIONS_FILE
        return read_records(path) if path.is_file() else []


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def session_ending(started: float, reached: dict, error: BaseException | None, other_share: float | None = None) -> dict:
    """How a session of sessions.jsonl ended: when, its length, where the run's last checkpoint stands (after an
    error, steps trained since that checkpoint are not counted: the next session goes on from it), how, and the
    share of the CPU time other work took meanwhile, where the system says."""
    ended = time.time()
    return {"ended": utc(ended), "seconds": round(ended - started, 1), "reached": reached, "outcome": outcome(error),
            **({} if other_share is None else {"other_cpu_share": round(other_share, 3)})}


def outcome(error: BaseException | None) -> str:
    """How a session ended: finished, the signal that stopped it after a checkpoint, or the error."""
    if error is None:
        return "finished"
    if isinstance(error, RunInterrupted):
        return signal.Signals(error.exit_code - 128).name
    if isinstance(error, KeyboardInterrupt):
        return "stopped at once by a second signal; the steps since the last checkpoint are lost"
    first_line = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


@contextlib.contextmanager
def writing_into(path: str | os.PathLike, command: str = "") -> Iterator[None]:
    """Hold the lease of the run folder that `path` (a file or folder about to be written) lies in, if it lies
    in one, while the block writes it: calibrated checkpoints, exported weights, a run's report/."""
    folder = Path(path).parent
    if not RunFolder(folder).holds_run():
        yield
        return
    lease = lock.take(folder, command)
    try:
        yield
    finally:
        lease.release()


@dataclass(frozen=True)
class RunRecord:
    """A finished run, as its folder holds it."""

    path: Path
    summary: dict
    records: list[dict]  # metrics.jsonl, one per evaluation (empty if the file is gone)
    config: dict  # config.yaml, or the summary's copy
    config_text: str
    sessions: list[dict] = field(default_factory=list)  # sessions.jsonl (empty for runs of glmc before it)
    notes: tuple[str, ...] = ()  # what the readers should say of figures left out of `summary`

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def card(self) -> dict:
        return self.summary["dataset"]

    @property
    def training_precision(self) -> str:
        """The precision the run trained in, as each of its pieces resolved it (`auto` follows the machine): "bf16",
        or "bf16 then fp32" for a run resumed on a machine that trains in another; "" where its records do not say."""
        pieces = [session_precision(session) for session in self.sessions]
        if not any(pieces):
            pieces = [session_precision(self.summary)]
        return " then ".join(precision for precision, _ in itertools.groupby(piece for piece in pieces if piece))


def session_precision(record: Mapping) -> str | None:
    """What one session (a sessions.jsonl record, or a summary) trained in."""
    return (record.get("precision") or {}).get("train")


def load_run(path: str | os.PathLike) -> RunRecord:
    """The finished run in `path`; a missing folder or summary, or unreadable files, are one-line GlmcErrors."""
    folder = Path(path)
    if not folder.is_dir():
        raise GlmcError(f"run folder not found: {folder}")
    if not (folder / SUMMARY_FILE).is_file():
        raise GlmcError(f"{folder} holds no finished run (no {SUMMARY_FILE}; it is written when training ends): "
                         f"glmc status {folder} says where it stands")
    summary = read_json(folder / SUMMARY_FILE)
    if not isinstance(summary, dict) or not {"final", "best", "dataset", "method"} <= set(summary):
        raise GlmcError(f"{folder / SUMMARY_FILE} is not a glmc run summary")
    config_path = folder / CONFIG_FILE
    config_text = read_text(config_path) if config_path.is_file() else yaml.safe_dump(summary.get("config", {}), sort_keys=False)
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError as error:
        raise GlmcError(f"cannot read {config_path}: {str(error).splitlines()[0]}") from None
    metrics = folder / METRICS_FILE
    records = read_records(metrics) if metrics.is_file() else []
    sessions = RunFolder(folder).read_sessions()
    config = config if isinstance(config, dict) else {}
    note = unscaled_calibration_note(summary, config)
    if note:
        summary = without_calibration(summary)
    return RunRecord(folder, summary, records, config, config_text, sessions, notes=(note,) if note else ())


# An evaluation's calibration figures (glmc.metrics), computed from the softmax of the model's logits.
CALIBRATION_KEYS = ("ece", "nll", "ece_many", "ece_medium", "ece_few", "reliability")


def unscaled_calibration_note(summary: dict, config: dict) -> str:
    """Why the summary's calibration figures cannot be read, or "".

    The evaluations of a method whose loss scales the head's outputs (LDAM-DRW's s) once took the softmax of the
    bare cosines, near-uniform probabilities whose ECE and NLL measure the missing scale, not the model. Summaries
    now record the scale the model applied (`logit_scale`); such a method's summary without it is read as one of
    those. Its accuracies stand: the scale moves no arg max.
    """
    if "logit_scale" in summary:
        return ""
    try:
        scale = stored_config(config).method.logit_scale
    except GlmcError:
        return ""
    if scale == 1.0:
        return ""
    return (f"ECE and NLL left out: the glmc that trained this run computed them on its cosine head's bare "
            f"cosines, without the scale s = {scale:g} its loss trained; `glmc eval` of its checkpoint gives them")


def without_calibration(summary: dict) -> dict:
    return {**summary, **{part: {key: value for key, value in summary[part].items() if key not in CALIBRATION_KEYS}
                          for part in ("final", "best")}}


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise GlmcError(f"cannot read {path}: {error}") from None


def read_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise GlmcError(f"cannot read {path}: not valid JSON ({error})") from None


def read_records(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise GlmcError(f"{path} line {number} is not valid JSON") from None
    return records
