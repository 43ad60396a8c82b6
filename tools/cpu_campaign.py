"""The CPU campaign: long runs, one after the other, advanced a piece at a time on a machine that may forget its files.

    python tools/cpu_campaign.py restore   # what the run needs, rebuilt where the machine came back without it
    python tools/cpu_campaign.py start     # the next piece, in the background (its own session)
    python tools/cpu_campaign.py start --set train.eval_every=1   # ... evaluating every epoch from here on
    python tools/cpu_campaign.py pause     # SIGTERM: the run finishes its step, saves, exits; waits for that
    python tools/cpu_campaign.py status    # running or not, how far, the last evaluation
    python tools/cpu_campaign.py fallback  # the end of a stretch of work: the fallback commit, and the next one

The runs, in order, are listed in tools/cpu_queue.yaml; every command acts on the first one that has
not finished (no summary.json in its live folder or in its committed record folder). A run not
started yet names its preset and the commit to train it with.

The live run folder (runs/<run>), the worktree of the commit the run trains with
(scratch/campaign-<commit>) and the data (data/cifar10) are all git-ignored, so a machine that
comes back without its ignored folders has none of them. `restore` rebuilds each one that is
missing and touches none that is there: the run folder from the last fallback commit that the
committed RUN.md names (records and checkpoint from the same commit, the checkpoint's SHA-256
checked before the folder is put in place), the worktree at the commit the run's own
sessions.jsonl names (or, before its first piece, the queue's), the data with the shared
materialiser.

`fallback`, with no piece running, makes the two commits that end a stretch of work that advanced the
run by an epoch or more: the run folder's records and last checkpoint (tools/finish_run.py
--unfinished) in place of the committed record, then the checkpoint out of the tree again with a
row naming that commit added to RUN.md's fallback table (| commit | reached | size |).

`start` runs `glmc train --resume` (before the first checkpoint: `glmc train --preset ...
--resume-if-exists`) from that worktree (PYTHONPATH), so the code under the run never changes while
other work lands. `start --set KEY=VALUE` adds values to that command; a resumed run takes machine keys
only (evaluation cadence, checkpoint interval, precisions) and writes them into its config, so the pieces
after keep them. Every piece's start (the CPU model and whether it has bf16 natively, which decides
the run's `auto` precision) and end (exit code) go to runs/campaign.log, its output to
runs/campaign.log.out.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import yaml

from glmc.files import file_sha256
from glmc.machine import cpu_bf16, machine_description

ROOT = Path(__file__).resolve().parents[1]
QUEUE = ROOT / "tools" / "cpu_queue.yaml"
NAME = "cifar10-lt-if100-authors-cpu"
RECORD = Path("results") / "cifar10-lt" / NAME  # committed: RUN.md names the fallback commits
DATA = Path("data") / "cifar10"
SHARED_MATERIALIZER = ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "materialize.py"
CHECKPOINT = "checkpoint_last.pt"
PAUSE_TIMEOUT_S = 900  # a SIGTERM during an evaluation waits for it (about 3 minutes here)


class CampaignError(Exception):
    """A one-line reason the command cannot go on; exit status 2."""


@dataclass(frozen=True)
class QueuedRun:
    """One run of the queue: runs/<name>, committed under `record`; before its first piece, how to start it."""

    name: str
    record: Path  # relative to the checkout: RUN.md (its fallback table), and the results once finished
    preset: str | None = None
    commit: str | None = None  # the glmc commit that trains it, until its sessions.jsonl names one
    overrides: tuple[str, ...] = ()  # KEY=VALUE, given to glmc train as --set


AUTHORS = QueuedRun(NAME, RECORD)


def read_queue(path: Path | None = None) -> list[QueuedRun]:
    path = path or QUEUE
    try:
        entries = yaml.safe_load(path.read_text())
        return [QueuedRun(name=entry["run"], record=Path(entry["record"]), preset=entry.get("preset"),
                          commit=None if entry.get("commit") is None else str(entry["commit"]),
                          overrides=tuple(entry.get("set", ()))) for entry in entries]
    except (OSError, yaml.YAMLError, TypeError, KeyError) as error:
        raise CampaignError(f"{path}: not a list of runs (run, record; preset, commit, set): {error}") from None


@dataclass(frozen=True)
class Campaign:
    """Where everything lives, relative to one checkout (tests use a scratch repository), for one queued run."""

    root: Path
    entry: QueuedRun = AUTHORS

    @property
    def run(self) -> Path:
        return self.root / "runs" / self.entry.name

    @property
    def record(self) -> Path:
        return self.root / self.entry.record

    @property
    def finished(self) -> bool:
        return (self.run / "summary.json").is_file() or (self.record / "summary.json").is_file()

    @property
    def data(self) -> Path:
        return self.root / DATA

    @property
    def log(self) -> Path:
        return self.root / "runs" / "campaign.log"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the running piece, and holding its pid."""
        return self.root / "runs" / "campaign.lock"

    def worktree(self, commit: str) -> Path:
        return self.root / "scratch" / f"campaign-{commit[:7]}"


def current(root: Path, queue: list[QueuedRun]) -> Campaign:
    """The campaign of the first queued run that has not finished."""
    for entry in queue:
        campaign = Campaign(root, entry)
        if not campaign.finished:
            return campaign
    queue = QUEUE.relative_to(ROOT) if QUEUE.is_relative_to(ROOT) else QUEUE
    raise CampaignError(f"every run of {queue} has finished: queue the next one")


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise CampaignError(f"git {' '.join(args)}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}")
    return done.stdout


def fallbacks(run_md: Path) -> list[str]:
    """The commits of RUN.md's table of fallback checkpoints, in order (none where RUN.md is missing)."""
    return re.findall(r"^\| commit ([0-9a-f]{7,40}) \|", run_md.read_text(), flags=re.MULTILINE) if run_md.is_file() else []


def last_fallback(run_md: Path) -> str:
    """The commit of the last row of RUN.md's table of fallback checkpoints."""
    if not run_md.is_file():
        raise CampaignError(f"{run_md} is missing: no fallback to restore the run from")
    commits = fallbacks(run_md)
    if not commits:
        raise CampaignError(f"{run_md} names no fallback commit (a row '| commit <sha> | ...' of its fallback table)")
    return commits[-1]


def extract_fallback(campaign: Campaign, commit: str) -> None:
    """The run folder as `commit` holds it, put in place only once its checkpoint matches its SHA-256."""
    campaign.run.parent.mkdir(parents=True, exist_ok=True)
    record = campaign.entry.record
    with tempfile.TemporaryDirectory(dir=campaign.run.parent, prefix=f".{campaign.entry.name}-") as scratch:
        archive = Path(scratch) / "fallback.tar"
        with archive.open("wb") as out:
            done = subprocess.run(["git", "-C", str(campaign.root), "archive", commit, record.as_posix()], stdout=out,
                                  stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise CampaignError(f"git archive {commit} {record}: {done.stderr.strip()}")
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        folder = Path(scratch) / record
        checkpoint = folder / CHECKPOINT
        if not checkpoint.is_file():
            raise CampaignError(f"commit {commit} holds no {record / CHECKPOINT}")
        expected = (folder / f"{CHECKPOINT}.sha256").read_text().split()[0]
        if file_sha256(checkpoint) != expected:
            raise CampaignError(f"{record / CHECKPOINT} of commit {commit} does not match its SHA-256; nothing restored")
        folder.rename(campaign.run)


def run_commit(campaign: Campaign) -> str:
    """The glmc commit the run's pieces have all run (sessions.jsonl), or, before its first, the queue's."""
    sessions = read_sessions(campaign.run)
    if not sessions and campaign.entry.commit:
        return campaign.entry.commit
    commits = {session["git_commit"] for session in sessions if session.get("git_commit")}
    if len(commits) != 1:
        raise CampaignError(f"{campaign.run / 'sessions.jsonl'} names {len(commits)} glmc commits; expected exactly one")
    return commits.pop()


def not_started(campaign: Campaign) -> bool:
    """A queued run with nothing to resume: no checkpoint here and no fallback committed."""
    return (campaign.entry.preset is not None and not (campaign.run / CHECKPOINT).is_file()
            and not fallbacks(campaign.record / "RUN.md"))


def parse_sessions(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_sessions(run: Path) -> list[dict]:
    path = run / "sessions.jsonl"
    return parse_sessions(path.read_text()) if path.is_file() else []


def last_reached(sessions: list[dict]) -> dict | None:
    """Where the last piece of a sessions list ended (epochs done, steps into the next, global step), or None."""
    return next((s["reached"] for s in reversed(sessions) if "reached" in s), None)


def restore(campaign: Campaign, materializer: Path = SHARED_MATERIALIZER) -> list[str]:
    """Rebuild what is missing; what each step did, one line each."""
    done = []
    if (campaign.run / CHECKPOINT).is_file():
        done.append(f"{campaign.run}: live, kept ({position(campaign.run)})")
    elif not_started(campaign):
        done.append(f"{campaign.run}: not started; `start` starts it (--preset {campaign.entry.preset})")
    elif campaign.run.exists():
        raise CampaignError(f"{campaign.run} exists without {CHECKPOINT}: move it away to restore the fallback")
    else:
        commit = last_fallback(campaign.record / "RUN.md")
        extract_fallback(campaign, commit)
        done.append(f"{campaign.run}: restored from commit {commit}, SHA-256 checked ({position(campaign.run)})")
    commit = run_commit(campaign)
    worktree = campaign.worktree(commit)
    if (worktree / "src" / "glmc").is_dir():
        done.append(f"{worktree}: kept")
    else:
        git(campaign.root, "worktree", "prune")
        git(campaign.root, "worktree", "add", "--detach", str(worktree), commit)
        done.append(f"{worktree}: added at {commit[:12]}")
    if (campaign.data / "cifar-10-batches-py").is_dir():
        done.append(f"{campaign.data}: kept")
    elif not materializer.is_file():
        raise CampaignError(f"{materializer} is missing: materialise CIFAR-10 into {campaign.data} by hand")
    else:
        subprocess.run([sys.executable, str(materializer), str(campaign.data)], check=True, capture_output=True)
        done.append(f"{campaign.data}: materialised")
    return done


def reached(run: Path) -> dict | None:
    return last_reached(read_sessions(run))


def position(run: Path) -> str:
    where = reached(run)
    if where is None:
        return "not started"
    return f"{where['epoch']} epochs + {where['step']} steps ({where['global_step']:,} steps)"  # epochs done


def starting_point(run: Path) -> str:
    """Where a piece starts, for the log: `from the beginning`, or `at 118 epochs + 122 steps (23,014 steps)`."""
    return "from the beginning" if reached(run) is None else f"at {position(run)}"


def cpu_description() -> str:
    """The machine, with its bf16 instructions or the lack of them said outright: the run's `auto` precision
    follows them (bf16 where native, else fp32)."""
    return machine_description() + ("" if cpu_bf16() else ", no native bf16")


def running_pid(campaign: Campaign) -> int | None:
    """The pid of the running piece's supervisor, or None. A piece holds runs/campaign.lock (flock) for as
    long as it runs, so a crashed one never looks alive and a reused pid is never mistaken for one."""
    if not campaign.lock_file.is_file():
        return None
    with campaign.lock_file.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return int(campaign.lock_file.read_text().strip() or 0) or None
        fcntl.flock(lock, fcntl.LOCK_UN)
    return None


def start(campaign: Campaign, overrides: Sequence[str] = ()) -> int:
    """The next piece, in the background; `overrides` (KEY=VALUE) go to its glmc train as --set."""
    if not (campaign.run / CHECKPOINT).is_file() and not not_started(campaign):
        raise CampaignError(f"{campaign.run / CHECKPOINT} is missing: run `python tools/cpu_campaign.py restore` first")
    if (campaign.run / "summary.json").is_file():
        raise CampaignError(f"{campaign.run} has finished (summary.json): nothing to resume")
    worktree = campaign.worktree(run_commit(campaign))
    if not (worktree / "src" / "glmc").is_dir():
        raise CampaignError(f"{worktree} is missing: run `python tools/cpu_campaign.py restore` first")
    with campaign.lock_file.open("a+") as lock, (campaign.root / "runs" / "campaign.log.out").open("ab") as out:
        try:  # taken here and handed to the piece, which holds it until it exits: two starts cannot both pass
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignError(f"a piece is already running (pid {running_pid(campaign)}); pause it first") from None
        piece = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--root", str(campaign.root), "_piece",
                                  *set_arguments(overrides)],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 pass_fds=(lock.fileno(),))
        lock.truncate(0)
        lock.write(f"{piece.pid}\n")
    return piece.pid


def log(campaign: Campaign, line: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with campaign.log.open("a") as file:
        file.write(f"{stamp} {line}\n")


def set_arguments(overrides: Sequence[str]) -> list[str]:
    return [argument for pair in overrides for argument in ("--set", pair)]


def train_command(campaign: Campaign, overrides: Sequence[str] = ()) -> list[str]:
    """`glmc train --resume`; before the run's first checkpoint, the command that starts it (or continues the
    folder a piece stopped before its first checkpoint). `overrides` come last: the run's config keeps them."""
    glmc = [sys.executable, "-m", "glmc", "train"]
    if (campaign.run / CHECKPOINT).is_file() or campaign.entry.preset is None:
        return [*glmc, "--resume", str(campaign.run), *set_arguments(overrides)]
    return [*glmc, "--preset", campaign.entry.preset, "--data-root", str(DATA), "--output", str(campaign.run),
            "--resume-if-exists", *set_arguments((*campaign.entry.overrides, *overrides))]


def piece(campaign: Campaign, overrides: Sequence[str] = ()) -> int:
    """One piece, in the foreground of its own session: the training, its start and end in the log."""
    worktree = campaign.worktree(run_commit(campaign))
    signal.signal(signal.SIGTERM, lambda *_: None)  # `pause` signals the whole group: the training saves, this waits
    given = "".join(f" {argument}" for argument in set_arguments(overrides))
    log(campaign, f"start {starting_point(campaign.run)} on {cpu_description()}, glmc from {worktree}{given}")
    environment = {**os.environ, "PYTHONPATH": str(worktree / "src")}
    code = subprocess.run(train_command(campaign, overrides), cwd=campaign.root, env=environment).returncode
    log(campaign, f"end rc={code} at {position(campaign.run)}")
    return code


def pause(campaign: Campaign, timeout_s: float = PAUSE_TIMEOUT_S) -> bool:
    """SIGTERM the running piece and wait for it to save and exit; False when none was running."""
    pid = running_pid(campaign)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running_pid(campaign) is not None:  # the lock goes with the piece's exit
        if time.monotonic() > deadline:
            raise CampaignError(f"pid {pid} still runs {timeout_s:.0f} s after SIGTERM; look at runs/campaign.log.out")
        time.sleep(1)
    return True


FALLBACK_HEADER = "| commit | reached | size |"


def fallback(campaign: Campaign) -> list[str]:
    """The end of a stretch of work: commit the live run folder as the run's fallback (records and last checkpoint
    with its SHA-256, in place of the committed record), then take the checkpoint out of the tree again and name that
    commit in RUN.md's fallback table, in a second commit. None for a stretch that added less than an epoch."""
    if (pid := running_pid(campaign)) is not None:
        raise CampaignError(f"a piece is running (pid {pid}); pause it first")
    live, committed = reached(campaign.run), committed_reached(campaign)
    if live is None or not (campaign.run / CHECKPOINT).is_file():
        raise CampaignError(f"{campaign.run} has no {CHECKPOINT} and sessions to commit")
    per_epoch = steps_per_epoch(live) or steps_per_epoch(committed or {})
    if committed is not None and per_epoch and live["global_step"] - committed["global_step"] < per_epoch:
        raise CampaignError(f"{live['global_step'] - committed['global_step']} steps since the last fallback, less than "
                            "an epoch: no fallback for this stretch")
    run_md = campaign.record / "RUN.md"
    table = run_md.read_text().splitlines() if run_md.is_file() else []
    if FALLBACK_HEADER not in table:
        raise CampaignError(f"{run_md} has no fallback table ('{FALLBACK_HEADER}' and its rows): write it first")
    record = campaign.entry.record.as_posix()
    checkpoint, checksum = f"{record}/{CHECKPOINT}", f"{record}/{CHECKPOINT}.sha256"
    finish = subprocess.run([sys.executable, str(ROOT / "tools" / "finish_run.py"), str(campaign.run), str(campaign.record),
                             "--unfinished"], capture_output=True, text=True)
    if finish.returncode != 0:
        raise CampaignError(f"tools/finish_run.py: {finish.stderr.strip().splitlines()[-1]}")
    size = f"{(campaign.record / CHECKPOINT).stat().st_size / 1e6:.1f} MB"
    where = describe(live, per_epoch, campaign.run)
    git(campaign.root, "add", "--", record)
    git(campaign.root, "commit", "-q", "-m", f"Fallback of {campaign.entry.name}: the run folder at {where} with its last "
                                             f"checkpoint and optimiser state ({size}, SHA-256 beside it)")
    commit = git(campaign.root, "rev-parse", "--short=12", "HEAD").strip()
    git(campaign.root, "rm", "-q", "--cached", "--", checkpoint, checksum)
    (campaign.root / checkpoint).unlink()
    (campaign.root / checksum).unlink()
    end = table.index(FALLBACK_HEADER) + 1
    while end < len(table) and table[end].startswith("|"):  # the table's separator and rows
        end += 1
    table.insert(end, f"| commit {commit} | {where} | {size} |")
    run_md.write_text("\n".join(table) + "\n")
    git(campaign.root, "add", "--", f"{record}/RUN.md")
    git(campaign.root, "commit", "-q", "-m", f"The fallback checkpoint of {campaign.entry.name} leaves the tree (git keeps "
                                             f"it in {commit}, which RUN.md names as the run's last fallback)")
    return [f"commit {commit}: the fallback at {where} ({size})",
            f"commit {git(campaign.root, 'rev-parse', '--short=12', 'HEAD').strip()}: its checkpoint out of the tree, "
            f"named in {run_md.relative_to(campaign.root)}", finish.stdout.strip()]


def committed_reached(campaign: Campaign) -> dict | None:
    """Where the record committed at HEAD stands (its sessions.jsonl there, whatever the working tree holds)."""
    shown = subprocess.run(["git", "-C", str(campaign.root), "show", f"HEAD:{campaign.entry.record.as_posix()}/sessions.jsonl"],
                           capture_output=True, text=True)
    return last_reached(parse_sessions(shown.stdout)) if shown.returncode == 0 else None


def steps_per_epoch(where: dict) -> int | None:
    """From a `reached` record: global step = epochs done x steps per epoch + steps into the next."""
    return (where["global_step"] - where["step"]) // where["epoch"] if where.get("epoch") else None


def describe(where: dict, per_epoch: int | None, run: Path) -> str:
    """`120 epochs and 29 steps (23,309 of 38,800 steps)`, as RUN.md's fallback table says it."""
    epochs = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] if (run / "config.yaml").is_file() else None
    total = f" of {epochs * per_epoch:,}" if epochs and per_epoch else ""
    step = "1 step" if where["step"] == 1 else f"{where['step']} steps"
    return f"{where['epoch']} epochs and {step} ({where['global_step']:,}{total} steps)"


def evaluations(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if '"top1"' in line] if path.is_file() else []


def where_now(run: Path, evaluated: list[dict]) -> str:
    """Where the run stands: where its last piece ended, or, while a piece runs on past it, its last evaluation
    (`evaluated`: the run's evaluation records)."""
    if not run.is_dir():
        return "missing (restore it)"
    ended = f"{position(run)} at the last piece's end"
    last = evaluated[-1] if evaluated else {}
    if last.get("global_step", 0) > (reached(run) or {}).get("global_step", 0):
        return f"{last['epoch']} epochs ({last['global_step']:,} steps) at its last evaluation; {ended}"
    return ended


def status(campaign: Campaign) -> list[str]:
    evaluated = evaluations(campaign.run)
    lines = [f"run: {campaign.run}: {where_now(campaign.run, evaluated)}"]
    pid = running_pid(campaign)
    lines.append(f"piece: running (pid {pid})" if pid else "piece: not running")
    if (campaign.run / CHECKPOINT).is_file():
        saved = datetime.fromtimestamp((campaign.run / CHECKPOINT).stat().st_mtime, timezone.utc)
        lines.append(f"last checkpoint: {saved:%Y-%m-%dT%H:%M:%SZ}")
    if evaluated:
        last = evaluated[-1]
        lines.append(f"last evaluation: epoch {last.get('epoch')}: top-1 {last['top1']:.2f}")
    if campaign.log.is_file():
        lines += [f"log: {line}" for line in campaign.log.read_text().splitlines()[-2:]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("command", choices=["restore", "start", "pause", "status", "fallback", "_piece"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="start: given to the piece's glmc train (on a resumed run, machine keys only, such as "
                             "train.eval_every); the run's config keeps it for the pieces after")
    args = parser.parse_args(argv)
    if args.set and args.command not in ("start", "_piece"):
        print(f"error: --set is for start (the values a piece trains with); {args.command} takes none", file=sys.stderr)
        return 2
    try:
        campaign = current(args.root.resolve(), read_queue())
        if args.command == "restore":
            print("\n".join(restore(campaign)))
        elif args.command == "start":
            print(f"piece started (pid {start(campaign, args.set)}); its output goes to runs/campaign.log.out")
        elif args.command == "pause":
            print("paused: " + position(campaign.run) if pause(campaign) else "no piece was running")
        elif args.command == "status":
            print("\n".join(status(campaign)))
        elif args.command == "fallback":
            print("\n".join(fallback(campaign)))
        else:
            return piece(campaign, args.set)
    except CampaignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
