"""`glmc status RUN_DIR...`: where a run stands, read from its folder while it trains or after.

A run is *finished* (its summary.json), *training* (a live process holds its folder), *stopped*
(its last session recorded how it ended: a signal, an error) or *lost* (its last session never
recorded an end: killed without a signal, or its machine went away). Its position is its last
checkpoint's, read as `glmc eval` reads one: without the folder's lease, so never in a writer's
way. Its pace is the seconds a step of its latest session that trained an epoch or more (`run_pace`),
evaluations and start-up included; the time left is the steps left at that pace.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from glmc.checkpoint import CorruptCheckpoint, load_checkpoint, load_latest_good, previous_path
from glmc.errors import GlmcError
from glmc.lock import LOCK_FILE, gone_because, read_holder
from glmc.machine import slowed_by_others
from glmc.metrics import format_shots
from glmc.records import selection_score, selection_set
from glmc.rundir import (CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE, RunFolder, read_json, read_records,
                         read_text, utc)

STATES = ("finished", "training", "stopped", "lost", "not started")
MAX_STEPS_REACHED = "train.max_steps reached"


@dataclass(frozen=True)
class RunStatus:
    """What a run folder says of where its run stands (`run_status`)."""

    path: str
    state: str  # one of STATES
    epochs: int  # the run's train.epochs
    position: dict | None = None  # epoch, step, global_step of its last checkpoint (its summary's, its last session's)
    steps_per_epoch: int | None = None  # None before its first epoch ends
    saved: str | None = None  # UTC, when that checkpoint was written; None where the folder holds none
    holder: str | None = None  # the process training it
    outcome: str | None = None  # how its last session ended (stopped) or that it never recorded an end (lost)
    sessions: int = 0
    seconds_per_step: float | None = None  # its pace (`run_pace`)
    pace_session: int | None = None  # the session of sessions.jsonl that pace was measured over
    pace_other_cpu_share: float | None = None  # of the CPU time, what other work took in that session (so far, while it trains)
    last_evaluation: dict | None = None  # its last metrics.jsonl record
    best_evaluation: dict | None = None  # its best so far (glmc.records.selection_score: test top-1, or validation)
    summary: dict | None = None  # finished runs

    @property
    def total_steps(self) -> int | None:
        return None if self.steps_per_epoch is None else self.epochs * self.steps_per_epoch

    @property
    def seconds_left(self) -> float | None:
        if self.state == "finished" or self.seconds_per_step is None or self.total_steps is None or not self.position:
            return None
        return (self.total_steps - self.position["global_step"]) * self.seconds_per_step


def run_status(path: str | Path) -> RunStatus:
    """The status of the run in `path`; a folder that holds no glmc run is a one-line GlmcError."""
    folder = Path(path)
    if not folder.is_dir():
        raise GlmcError(f"run folder not found: {folder}")
    if not (folder / CONFIG_FILE).is_file():
        raise GlmcError(f"{folder} holds no glmc run (no {CONFIG_FILE})")
    sessions = RunFolder(folder).read_sessions()
    metrics = folder / METRICS_FILE
    records = read_records(metrics) if metrics.is_file() else []
    common = dict(path=str(path), epochs=planned_epochs(folder / CONFIG_FILE), sessions=len(sessions),
                  last_evaluation=records[-1] if records else None,
                  best_evaluation=max(records, key=selection_score) if records else None)
    summary = read_json(folder / SUMMARY_FILE) if (folder / SUMMARY_FILE).is_file() else None
    if summary is not None and trained_every_epoch(summary, records):
        position = {"epoch": summary["epochs"], "step": 0, "global_step": summary["steps"]}
        return RunStatus(state="finished", position=position, summary=summary, **common)
    holder = live_holder(folder)
    last = sessions[-1] if sessions else {}
    checkpoint = last_checkpoint(folder)
    if checkpoint is None and not last:
        return RunStatus(state="training" if holder else "not started", holder=holder, **common)
    position, saved_at = checkpoint or (last.get("reached", last.get("from")), None)
    if holder:
        state, outcome = "training", None
    elif "ended" not in last:
        state, outcome = "lost", "its last session recorded no end: killed without a signal, or its machine was lost"
    else:  # a session that ended "finished" without every epoch trained stopped at train.max_steps
        state, outcome = "stopped", MAX_STEPS_REACHED if last.get("outcome") == "finished" else last.get("outcome")
    seconds_per_step, pace_session = run_pace(sessions, position, saved_at)
    shared = next((session_other_share(session, records) for session in sessions if session.get("session") == pace_session),
                  None)
    return RunStatus(state=state, position=position, steps_per_epoch=steps_per_epoch(position),
                     saved=None if saved_at is None else utc(saved_at), holder=holder, outcome=outcome,
                     seconds_per_step=seconds_per_step, pace_session=pace_session, pace_other_cpu_share=shared, **common)


def planned_epochs(config_file: Path) -> int:
    """The run's train.epochs, from its config.yaml."""
    try:
        return int(yaml.safe_load(read_text(config_file))["train"]["epochs"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        raise GlmcError(f"{config_file} is not a glmc run config (no train.epochs)") from None


def trained_every_epoch(summary: dict, records: list[dict]) -> bool:
    """Whether the summary closes the whole run, not a piece of it that train.max_steps ended."""
    return summary["final"]["epoch"] >= summary["epochs"] and not (records and records[-1].get("partial_epoch"))


def live_holder(folder: Path) -> str | None:
    """Who holds `folder`'s lease, if a live process does."""
    held = read_holder(folder / LOCK_FILE)
    if held is None or gone_because(*held) is not None:
        return None
    return held[0].describe()


def last_checkpoint(folder: Path) -> tuple[dict, float] | None:
    """The position of the run's last good checkpoint and when it was written; None before its first."""
    if not RunFolder(folder).has_checkpoint():
        return None
    path = folder / LAST_CHECKPOINT
    for _ in range(3):  # a writer replacing the file and its checksum between our two reads: read again
        try:
            saved_at = path.stat().st_mtime
            return checkpoint_position(load_checkpoint(path)), saved_at
        except CorruptCheckpoint:
            time.sleep(0.2)
        except (FileNotFoundError, GlmcError):
            break
    checkpoint = load_latest_good(path)  # damaged or missing, as a resume would find it: the previous one, with a warning
    return checkpoint_position(checkpoint), previous_path(path).stat().st_mtime


def checkpoint_position(checkpoint: dict) -> dict:
    return {key: int(checkpoint["state"][key]) for key in ("epoch", "step", "global_step")}


def steps_per_epoch(position: dict) -> int | None:
    epoch, step, global_step = position["epoch"], position["step"], position["global_step"]
    return (global_step - step) // epoch if epoch > 0 else None


def run_pace(sessions: list[dict], position: dict, saved_at: float | None) -> tuple[float | None, int | None]:
    """Seconds a step, and the session they were measured over: the latest one that trained an epoch's steps or
    more (a session just begun is mostly its start-up), else the latest that trained any."""
    paces = []  # (steps, seconds, session number), latest first
    for session in reversed(sessions):
        steps, seconds = session_span(session, position, saved_at)
        if steps > 0 and seconds > 0:
            paces.append((steps, seconds, session["session"]))
    if not paces:
        return None, None
    per_epoch = steps_per_epoch(position) or 1
    steps, seconds, number = next((pace for pace in paces if pace[0] >= per_epoch), paces[0])
    return seconds / steps, number


def session_span(session: dict, position: dict, saved_at: float | None) -> tuple[int, float]:
    """The steps a session trained and the seconds they took: from its start to its end, or (running, or lost) to
    the last checkpoint it wrote."""
    if "ended" in session:
        return session["reached"]["global_step"] - session["from"]["global_step"], session["seconds"]
    if saved_at is None or "from" not in session:
        return 0, 0.0
    return position["global_step"] - session["from"]["global_step"], saved_at - parse_utc(session["started"])


def session_other_share(session: dict, records: list[dict]) -> float | None:
    """The share of the CPU time other work took while a session trained: what it recorded when it ended; for a
    session without an end (still training, or lost), its evaluated epochs' shares, weighted by their seconds."""
    if "ended" in session:
        return session.get("other_cpu_share")
    start = session.get("from", {}).get("global_step", 0)
    epochs = [record for record in records if record["global_step"] > start and record.get("other_cpu_share") is not None]
    seconds = sum(record["seconds"] for record in epochs)
    return sum(record["other_cpu_share"] * record["seconds"] for record in epochs) / seconds if seconds > 0 else None


def parse_utc(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def duration(seconds: float) -> str:
    """`2 h 05 min`, `7 min`, `40 s`."""
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# ---------------------------------------------------------------- what the command prints


def status_lines(status: RunStatus) -> list[str]:
    """The run's status: a first line with its state, indented lines with the facts behind it."""
    if status.state == "finished":
        return finished_lines(status)
    lines = [f"{status.path}: {state_phrase(status)}"]
    if status.position:
        saved = f"saved {status.saved}" if status.saved else "by its sessions.jsonl: the folder holds no checkpoint"
        lines.append(f"  at {where(status)}, {saved}")
    if status.last_evaluation:
        lines.append(f"  last evaluation: {evaluation(status.last_evaluation)}")
    if status.best_evaluation and status.best_evaluation is not status.last_evaluation:
        chosen_on = "validation" if "val" in status.best_evaluation else "test"
        lines.append(f"  best so far: {evaluation(status.best_evaluation)} ({chosen_on}-selected)")
    if status.seconds_per_step is not None:
        lines.append(f"  {pace(status)}")
    if status.state in ("stopped", "lost") and status.saved:
        lines.append(f"  glmc train --resume {status.path} goes on from there")
    return lines


def pace(status: RunStatus) -> str:
    """`4.40 s a step over session 20; 9 h 09 min left at that pace`, saying where other work shared the CPUs then."""
    current = " (this one)" if status.pace_session == status.sessions and status.state == "training" else ""
    shared = status.pace_other_cpu_share
    busy = f", while other work took {100 * shared:.0f}% of the CPU time" if slowed_by_others(shared) else ""
    left = "" if status.seconds_left is None else f"; {duration(status.seconds_left)} left at that pace"
    return f"{status.seconds_per_step:.2f} s a step over session {status.pace_session}{current}{busy}{left}"


def state_phrase(status: RunStatus) -> str:
    """How a run that has not finished stands: `training: process 4242 on host (...)`, `stopped (SIGTERM)`, ..."""
    return {"training": f"training: {status.holder}", "lost": f"lost: {status.outcome}",
            "stopped": f"stopped ({status.outcome})", "not started": "no checkpoint yet"}[status.state]


def where(status: RunStatus) -> str:
    """`epoch 105 of 520, step 14 of 24 (2,510 of 12,480 steps, 20.1%)`, or `the end of epoch 104 of 520 (...)`."""
    position, per_epoch, total = status.position, status.steps_per_epoch, status.total_steps
    if position["step"] == 0:
        place = f"the end of epoch {position['epoch']} of {status.epochs}"
    else:
        place = f"epoch {position['epoch'] + 1} of {status.epochs}, step {position['step']}"
        place += f" of {per_epoch}" if per_epoch else ""
    if total is None:
        return f"{place} ({position['global_step']:,} steps; how many an epoch has is known once the first ends)"
    return f"{place} ({position['global_step']:,} of {total:,} steps, {100 * position['global_step'] / total:.1f}%)"


def evaluation(record: dict) -> str:
    if record.get("top1") is None:
        return f"epoch {record['epoch']}, validation top-1 {record['val']['top1']:.2f}"
    return f"epoch {record['epoch']}, top-1 {record['top1']:.2f} ({format_shots(record)})"


def finished_lines(status: RunStatus) -> list[str]:
    summary = status.summary
    final, best = summary["final"], summary["best"]
    sessions = f" ({status.sessions} session{'s' if status.sessions != 1 else ''})" if status.sessions else ""
    lines = [f"{status.path}: finished, {summary['epochs']} epochs in {duration(summary['wall_seconds'])}{sessions}"]
    if final.get("top1") is not None:
        lines.append(f"  final: top-1 {final['top1']:.2f} ({format_shots(final)})")
        lines.append(f"  best: top-1 {best['top1']:.2f} at epoch {best['epoch']} ({selection_set(best)}-selected)")
    elif final.get("val"):  # eval.test=false, as glmc tune's trials: the validation set alone
        lines.append(f"  final: validation top-1 {final['val']['top1']:.2f}, balanced {final['val']['balanced']:.2f}"
                     " (the test set was not evaluated)")
    return lines


def status_json(status: RunStatus) -> str:
    return json.dumps({**asdict(status), "total_steps": status.total_steps, "seconds_left": status.seconds_left})
