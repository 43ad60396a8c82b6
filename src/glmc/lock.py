"""One writer per run folder: a lease in `DIR/lock.json` that names the process holding it.

A command that writes a run folder (`glmc train` and its `--resume` forms, `glmc reproduce`'s
training, calibration and export, `glmc calibrate` and `glmc report` writing into it; rank 0 of
a torchrun job) first takes the folder's lease, and gives it back when it ends. The lease file
is created whole or not at all (written beside, then hard-linked into place: `link` fails if the
name exists, on local disks and on NFS alike) and names its holder: host, boot, process id and
start time, since when, the command. While the holder works, a thread renews the lease (the
file's modification time) every `RENEW_SECONDS`.

A second process that finds the lease:

- refuses with one line (`FolderInUse`) while the holder lives: on this host, its process is
  still running (same boot, same process id and start time); on another host, it renewed the
  lease less than `LEASE_SECONDS` ago;
- takes the folder over otherwise (after kill -9 or a crash: the process is gone; after a power
  cut: another boot; a lost node: a lease not renewed for `LEASE_SECONDS`), and says so in one
  line. Two processes that take over at once are serialised by a second, short-lived file.

A holder whose lease was taken over (it stalled past `LEASE_SECONDS`, or its host was cut off from
the shared file system) finds out at its next write (`Lease.check`, `LostLease`) and stops
before writing. Readers (`glmc compare`, `eval`, `report` of finished runs) never take the lease.

What the file system must give, for the lease to hold between hosts: atomic `link` and
`rename` (local disks, NFS v3 and v4, Lustre, GPFS/Spectrum Scale, BeeGFS; not object-store
mounts such as s3fs), and clocks that agree to well within `LEASE_SECONDS` (NTP).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from glmc.errors import GlmcError

LOCK_FILE = "lock.json"
RENEW_SECONDS = 30.0
LEASE_SECONDS = 300.0  # a holder on another host that has not renewed its lease for this long is taken to be gone
TAKEOVER_SECONDS = 30.0  # a takeover marker older than this was left by a process that died taking over
BUSY = "is in use by"  # in every FolderInUse message (glmc reproduce --jobs reads it from a worker's stderr)


class FolderInUse(GlmcError):
    """Another live process holds the run folder's lease."""


class LostLease(GlmcError):
    """This process's lease on a run folder was taken over by another process."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as lock.json records it."""

    host: str
    pid: int
    since: str  # UTC, when the lease was taken
    token: str  # this lease, and no other
    boot: str | None = None  # the host's boot id (Linux): another boot means the holder is gone
    started: int | None = None  # the process's start time in clock ticks since boot (Linux), against reused ids
    command: str = ""

    def describe(self) -> str:
        return f"process {self.pid} on {self.host} since {self.since}" + (f" ({self.command})" if self.command else "")


HOLDER_FIELDS = {field.name for field in fields(Holder)}
UNREADABLE = -1  # the process id of a lock file that is not glmc's


def this_process(command: str = "") -> Holder:
    return Holder(host=socket.gethostname(), pid=os.getpid(), since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  token=uuid.uuid4().hex, boot=boot_id(), started=process_start(os.getpid()), command=command)


def boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


def process_start(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the command name, which may hold spaces and parentheses)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return None


def process_state(pid: int) -> str | None:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return None


def gone_because(holder: Holder, renewed: float) -> str | None:
    """Why `holder` no longer holds its lease (renewed at `renewed`, epoch seconds), or None while it lives."""
    if holder.pid == UNREADABLE:
        return "the lock file is not one glmc wrote"
    if holder.host != socket.gethostname():
        silent = time.time() - renewed
        if silent <= LEASE_SECONDS:
            return None
        return f"its lease was last renewed {silent / 60:.0f} min ago (the limit is {LEASE_SECONDS / 60:.0f} min)"
    if holder.boot is not None and boot_id() is not None and holder.boot != boot_id():
        return "this host has restarted since"
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return "the process is gone"
    except PermissionError:  # another user's process: it exists
        pass
    if process_state(holder.pid) == "Z":
        return "the process is gone"
    if holder.started is not None and process_start(holder.pid) not in (None, holder.started):
        return "the process is gone (its id now belongs to another process)"
    return None


class Lease:
    """This process's hold on a run folder, renewed in the background until `release`."""

    def __init__(self, path: Path, holder: Holder) -> None:
        self.path, self.holder = path, holder
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"glmc-lease {path.parent.name}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            if not self.holds():
                return
            with contextlib.suppress(OSError):  # a passing file-system hiccup: the next renewal tries again
                os.utime(self.path)

    def holds(self) -> bool:
        held = read_holder(self.path)
        return held is not None and held[0].token == self.holder.token

    def check(self) -> None:
        """Raise `LostLease` if another process has taken the folder over: call before writing to it."""
        if self.holds():
            return
        held = read_holder(self.path)
        now = f"{held[0].describe()} holds it now" if held else "its lock file is gone"
        raise LostLease(f"{self.path.parent} was taken over while this process wrote it ({now}); "
                        "this process stops without writing more")

    def release(self) -> None:
        self._stop.set()
        if self.holds():
            with contextlib.suppress(OSError):
                self.path.unlink()


def read_holder(path: Path) -> tuple[Holder, float] | None:
    """The holder a lock file names and the time its lease was last renewed; None if there is no lock file."""
    try:
        text, renewed = path.read_text(), path.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):  # no lock file, or no such folder at all
        return None
    except OSError as error:
        raise GlmcError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        record = json.loads(text)
        return Holder(**{key: value for key, value in record.items() if key in HOLDER_FIELDS}), renewed
    except (ValueError, TypeError, AttributeError):
        # not something glmc writes (a file is never seen half-written): a holder no one can check, taken for gone
        unreadable = Holder(host="?", pid=UNREADABLE, since="?", token=f"unreadable {renewed}", command="an unreadable lock file")
        return unreadable, renewed


def place(path: Path, holder: Holder) -> bool:
    """Create `path` holding `holder`, whole, unless it exists; True if created."""
    staged = path.with_name(f".{path.name}.{holder.token}")
    staged.write_text(json.dumps(asdict(holder)) + "\n")
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def in_use(folder: Path) -> FolderInUse | None:
    """The refusal a writer of `folder` would meet now, if a live process holds it (nothing is written)."""
    held = read_holder(Path(folder) / LOCK_FILE)
    if held is None or gone_because(*held) is not None:
        return None
    return busy(folder, held[0])


def busy(folder: str | os.PathLike, holder: Holder) -> FolderInUse:
    return FolderInUse(f"{folder} {BUSY} {holder.describe()}; wait for it to end, or stop it")


def take(folder: str | os.PathLike, command: str = "", say=None) -> Lease:
    """The lease on `folder` (which must exist) for this process; `FolderInUse` if a live process holds it.

    A gone holder's lease is taken over, and `say` (default: a line on stderr) is told why.
    """
    path = Path(folder) / LOCK_FILE
    say = say or (lambda message: print(f"glmc: {message}", file=sys.stderr, flush=True))
    me = this_process(command)
    try:
        for _ in range(100):
            if place(path, me):
                return Lease(path, me)
            held = read_holder(path)
            if held is None:
                continue  # released meanwhile: try again
            holder, renewed = held
            why = gone_because(holder, renewed)
            if why is None:
                raise busy(folder, holder)
            if replace(path, holder, me):
                say(f"{folder}: took over from {holder.describe()}: {why}")
                return Lease(path, me)
            time.sleep(0.05)  # another process is taking over, or took over: look again
    except OSError as error:
        raise GlmcError(f"cannot take the lock of {folder}: {error.strerror or error}") from None
    raise FolderInUse(f"{folder} {BUSY} processes that keep taking it over; try again")


def replace(path: Path, gone: Holder, me: Holder) -> bool:
    """Put `me` in place of the gone holder's lease, if no other process does it first."""
    marker = path.with_name(path.name + ".takeover")
    if not place(marker, me):
        with contextlib.suppress(OSError):
            if time.time() - marker.stat().st_mtime > TAKEOVER_SECONDS:
                marker.unlink()  # left by a process that died while it took over
        return False
    try:
        held = read_holder(path)
        if held is not None and held[0].token != gone.token:
            return False  # someone took it first
        path.unlink(missing_ok=True)
        return place(path, me)
    finally:
        marker.unlink(missing_ok=True)
