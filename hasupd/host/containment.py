"""Per-service process containment: a cgroup v2 per service, else process groups plus a subreaper.

Layout in cgroup mode. ``detect`` finds the cgroup2 mount in ``/proc/self/mountinfo`` (``/sys/fs/cgroup``
on pure v2 hosts, ``/sys/fs/cgroup/unified`` on hybrid ones) and hasupd's own cgroup ``P`` in
``/proc/self/cgroup`` ("0::P"). Service cgroups are always named ``<unit>.service``: the suffix keeps a
service called ``cgroup.procs`` or ``memory.max`` from colliding with the kernel's interface files and
makes the tree read like systemd's.

* ``root`` layout, when ``P`` is the real root cgroup (hosts without systemd, such as this build
  machine): services live in ``<mount>/<base_name>/<unit>.service``. hasupd stays in the root cgroup,
  which the kernel exempts from the "no internal processes" rule, so nothing has to move.
* ``delegated`` layout, when ``P`` is not the root and is ours to write (systemd ``Delegate=yes``, which
  marks it with the ``trusted.delegate`` xattr, or a container that hands us its cgroup): hasupd first
  moves itself into the leaf ``P/supervisor``, as delegated systemd programs do, so that ``P`` has no
  processes and controllers (memory) can be enabled for its children; services are the siblings
  ``P/<unit>.service``.

A cgroup that systemd manages but did not delegate is never touched (systemd would fight us over it);
then, and when there is no writable cgroup2 at all, the fallback is used: every main process leads
its own session, and hasupd is a child subreaper so that orphans of a service tree come back to
hasupd instead of init. The fallback finds a scope's processes through the main's descendants and
hasupd's adopted children that carry the scope's ``INVOCATION_ID`` or its session / process group.
That marker is good enough for killing (a process that copies it only gets itself killed), never for
trust: who may speak sd_notify for a scope is decided by ``holds``, from kernel facts only.

Nothing here polls: scopes are looked at when the state machine asks, and the Reaper acts on SIGCHLD.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path

from hasupd.host.procfs import (
    KILL_BOUND_SEC,
    KILL_RETRY_SEC,
    Children,
    has_env,
    kill_loop,
    kill_until_gone,
    make_subreaper,
    pids_with_env,
    signal_each,
    stat,
)
from hasupd.ports import SpawnError

__all__ = ["CgroupScope", "Containment", "ProcessGroupScope", "ScopeImpl", "make_subreaper"]
_SUFFIX = ".service"
_MAX_ANCESTRY = 256  # deeper trees than this are not real services; the walk must end
_MAX_RECORD = 256  # an invocation id is 32 hex digits; a longer record is damaged, not read whole
log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- scopes


class ScopeImpl(ABC):
    """One start of one unit: the common part of both kinds; satisfies ``hasupd.ports.Scope``."""

    kind = ""  # "cgroup" or "process-group"

    def __init__(self, owner: Containment, unit_name: str, invocation_id: str) -> None:
        self.unit_name = unit_name
        self.invocation_id = invocation_id
        self._owner = owner
        self._leader: int | None = None  # the main pid; also the session id of its tree
        self._main_alive = False
        self._released = False

    def attach(self, pid: int) -> None:
        """Record the main process (the spawner calls this right after it started)."""
        self._leader = pid
        self._main_alive = True

    def detach(self) -> None:
        """Record that the main process was reaped, so its pid number is not trusted any more."""
        self._main_alive = False

    def open_procs_fd(self) -> int | None:
        """Return a new O_CLOEXEC fd of the cgroup's cgroup.procs for the child to write "0" into
        before exec, or None when there is no cgroup. Raise SpawnError if it cannot be opened."""
        return None

    def open_dir_fd(self) -> int | None:
        """Return a new O_CLOEXEC fd of the cgroup's directory for clone3(CLONE_INTO_CGROUP), or None
        when there is no cgroup. Raise SpawnError if it cannot be opened."""
        return None

    def set_memory_max(self, nbytes: int | None) -> bool:
        """Set memory.max of the scope (None: no limit); return False if the memory controller is not
        available."""
        return False

    @abstractmethod
    def pids(self) -> set[int]:
        """Return the pids of the scope's processes that are alive now (zombies excluded)."""

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process of the scope; return how many were signalled."""
        return signal_each(self.pids(), sig)

    def signal_main(self, sig: int) -> int:
        """Send ``sig`` and SIGCONT to the main process only; with no main left, to every process.

        Return how many processes the scope has. The main's pid cannot have been reused: it is only
        forgotten (``detach``) once reaped, and reaping happens on the same loop thread.
        """
        if not self._main_alive or self._leader is None or self._released:
            count = self.signal_all(sig)
            if count and sig not in (signal.SIGKILL, signal.SIGCONT):
                self.signal_all(signal.SIGCONT)
            return count
        signal_each([self._leader], sig)
        if sig not in (signal.SIGKILL, signal.SIGCONT):
            signal_each([self._leader], signal.SIGCONT)
        return max(1, len(self.pids()))

    @abstractmethod
    def kill_all(self) -> int:
        """SIGKILL every process of the scope; return how many there were."""

    @abstractmethod
    def holds(self, pid: int) -> bool:
        """Return True if kernel facts (cgroup; else ancestry, session, process group) put ``pid`` in
        the scope; an INVOCATION_ID in its environment never does (any process can copy it)."""

    @abstractmethod
    def release(self) -> None:
        """Forget the scope once it is empty (a later call retries if it is not). Safe to repeat."""

    def _supersede(self) -> None:
        """A newer scope of the same unit took over: this object forgets everything."""
        self._released = True
        self._main_alive = False


class CgroupScope(ScopeImpl):
    """A cgroup v2 directory holding every process of one start."""

    kind = "cgroup"

    def __init__(self, owner: Containment, unit_name: str, invocation_id: str, path: Path) -> None:
        super().__init__(owner, unit_name, invocation_id)
        # A str, a Path on demand: one per service, and a Path keeps its parts parsed (~600 bytes).
        self._path = str(path)

    @property
    def path(self) -> Path:
        return Path(self._path)

    def open_dir_fd(self) -> int | None:
        try:
            return os.open(self._path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SpawnError(f"cannot open {self.path}: {e.strerror}") from e

    def open_procs_fd(self) -> int | None:
        try:
            return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SpawnError(f"cannot open {self.path}/cgroup.procs: {e.strerror}") from e

    def set_memory_max(self, nbytes: int | None) -> bool:
        try:
            _write(self.path / "memory.max", "max" if nbytes is None else str(nbytes))
        except FileNotFoundError:
            return False
        return True

    def pids(self) -> set[int]:
        """Return the pids in the cgroup (the kernel lists no zombies in cgroup.procs)."""
        return set() if self._released else _cgroup_pids(self.path)

    def holds(self, pid: int) -> bool:
        """Return True if ``pid`` is in the cgroup: only root or the kernel can move a process here."""
        return not self._released and pid in _cgroup_pids(self.path)

    def kill_all(self) -> int:
        """SIGKILL every process in the cgroup (cgroup.kill, which also catches forks in flight).

        Return how many processes were in it.
        """
        if self._released:
            return 0
        return _cgroup_kill(self.path)

    def release(self) -> None:
        """Remove the cgroup if it is empty; if it is not (EBUSY), a later call tries again."""
        if self._released:
            return
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY:
                return
            raise
        self._released = True
        self._owner._forget(self)


def _write(path: Path, text: str) -> None:
    """Write a cgroup interface file. Raise FileNotFoundError if the kernel does not offer it
    (open without O_CREAT: kernfs answers a create with EACCES, which would hide that)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _cgroup_pids(path: Path) -> set[int]:
    try:
        return {int(p) for p in (path / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


def _cgroup_kill(path: Path) -> int:
    pids = _cgroup_pids(path)
    if not pids:
        return 0
    try:
        _write(path / "cgroup.kill", "1")
    except FileNotFoundError:  # kernel < 5.14
        return kill_loop(lambda: _cgroup_pids(path))
    return len(pids)


def _cgroup_populated(path: Path) -> bool:
    try:
        return "populated 1" in (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False


class ProcessGroupScope(ScopeImpl):
    """The fallback: the main's session, its descendants and the orphans hasupd adopted from it."""

    kind = "process-group"

    def pids(self) -> set[int]:
        """Return the live (non-zombie) processes of the scope.

        Looks only at the main's tree and hasupd's own children: an adopted child belongs here when
        its session or process group is the main pid or its environment has this INVOCATION_ID.
        """
        if self._released or self._leader is None:
            return set()
        children = Children()
        found: dict[int, str] = {}

        def add_tree(root: int) -> None:
            stack = [root]
            while stack:
                pid = stack.pop()
                if pid in found or (st := stat(pid)) is None:
                    continue
                found[pid] = st.state
                stack.extend(children.of(pid))

        if self._main_alive:
            add_tree(self._leader)
        marker = f"INVOCATION_ID={self.invocation_id}".encode()
        others = self._owner._mains() - {self._leader}
        me = os.getpid()
        for pid in children.of(me):
            if pid in found or pid in others or (st := stat(pid)) is None or st.state == "Z":
                continue
            if self._leader in (st.sid, st.pgid) or has_env(pid, marker):
                add_tree(pid)
        return {pid for pid, state in found.items() if state != "Z" and pid != me}

    def holds(self, pid: int) -> bool:
        """Return True if ``pid`` is the live main process, descends from it, or is in its session or
        process group; or, once the main is gone, is an orphan hasupd adopted from that session or
        process group, or a descendant of one.

        Sound because the main leads a session hasupd created (setsid) and nobody can join a session
        from outside, and because the main's pid cannot be reused while hasupd has not reaped it; once
        it is reaped, a session id equal to it proves nothing unless the process came to hasupd as an
        orphan. The environment's INVOCATION_ID is not looked at: any process of the same user can read
        and copy it from /proc.
        """
        leader = self._leader
        if self._released or leader is None:
            return False
        me = os.getpid()
        others = self._owner._mains() - {leader}
        for _ in range(_MAX_ANCESTRY):
            st = stat(pid)
            if st is None or st.state == "Z" or pid in others:
                return False
            if self._main_alive and (pid == leader or leader in (st.sid, st.pgid)):
                return True
            if st.ppid == me:  # an adopted orphan (or the main): the first ancestor below hasupd
                return leader in (st.sid, st.pgid)
            if st.ppid <= 1:
                return False
            pid = st.ppid
        return False

    def kill_all(self) -> int:
        """SIGKILL the scope's processes until none is left (bounded, ~1 s); return how many."""
        return 0 if self._released else kill_loop(self.pids)

    def release(self) -> None:
        """Forget the scope once none of its processes is left; else a later call tries again."""
        if self._released or self.pids():
            return
        self._released = True
        self._owner._forget(self)


# --------------------------------------------------------------------------- containment


class Containment:
    """Creates scopes; one per daemon. Build it with ``detect``."""

    def __init__(
        self,
        kind: str,
        note: str,
        parent: Path | None = None,
        runtime_dir: Path | None = None,
        owns_parent: bool = False,
    ) -> None:
        self.kind = kind  # "cgroup" or "process-group"
        self.parent = parent  # the directory holding the <unit>.service cgroups
        self._note = note
        self._records = runtime_dir / "scopes" if runtime_dir is not None else None
        self._owns_parent = owns_parent
        self._scopes: dict[str, ScopeImpl] = {}
        self._damaged: set[Path] = set()  # damaged scope records already reported

    @classmethod
    def detect(
        cls, base_name: str = "hasupd", force_fallback: bool = False, runtime_dir: Path | None = None
    ) -> Containment:
        """Return the best containment this host allows; never raise for a missing cgroup.

        Also make hasupd a child subreaper (both modes: it costs nothing and catches orphans).
        ``runtime_dir`` (fallback only) keeps a record per live scope so that ``cleanup_stale`` after
        a crash of hasupd can find the old trees.
        """
        subreaper = "" if make_subreaper() else "; not a subreaper (prctl refused)"
        if force_fallback:
            return cls("process-group", "fallback forced" + subreaper, runtime_dir=runtime_dir)
        try:
            found = _find_own_cgroup()
            if isinstance(found, str):
                return cls("process-group", found + subreaper, runtime_dir=runtime_dir)
            own, is_root = found
            if is_root:
                parent = own / base_name
                _enable_memory(own)
                parent.mkdir(exist_ok=True)
                _enable_memory(parent)
                return cls("cgroup", f"root layout{subreaper}", parent, owns_parent=True)
            if own.name == "supervisor" and _delegated(own.parent):
                # A re-exec'd hasupd is already in the leaf it moved itself into.
                own = own.parent
            if Path("/run/systemd/system").exists() and not _delegated(own):
                why = f"cgroup {own} belongs to systemd and is not delegated (Delegate=yes)"
                return cls("process-group", why + subreaper, runtime_dir=runtime_dir)
            leaf = own / "supervisor"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            _enable_memory(own)
            return cls("cgroup", f"delegated layout, hasupd in {leaf}{subreaper}", own)
        except OSError as e:
            why = f"cgroup2 not writable: {e.strerror} ({e.filename})"
            return cls("process-group", why + subreaper, runtime_dir=runtime_dir)

    def describe(self) -> str:
        """Return one line for the startup record."""
        if self.kind == "cgroup" and self.parent is not None:
            kill = "cgroup.kill" if (self.parent / "cgroup.kill").exists() else "SIGKILL loop"
            memory = "memory" in _controllers(self.parent, "cgroup.subtree_control")
            return (
                f"cgroup v2 under {self.parent} ({self._note}; {kill}; "
                f"memory.max {'available' if memory else 'unavailable'})"
            )
        return f"process groups + subreaper ({self._note})"

    def scope(self, unit_name: str, invocation_id: str) -> ScopeImpl:
        """Return a new scope for one start of ``unit_name``.

        A leftover of the same unit (an earlier start, or an earlier hasupd) is killed first.
        Raise SpawnError if its cgroup cannot be created.
        """
        old = self._scopes.pop(unit_name, None)
        if old is not None:
            old.kill_all()
            old._supersede()
        scope: ScopeImpl
        if self.kind == "cgroup" and self.parent is not None:
            path = self.parent / (unit_name + _SUFFIX)
            try:
                if path.exists():
                    _kill_and_remove(path)
                path.mkdir(exist_ok=True)  # exists still if the leftover would not go away: reuse it
                if (path / "memory.max").exists():
                    _write(path / "memory.max", "max")
            except OSError as e:
                raise SpawnError(f"cannot create cgroup {path}: {e.strerror}") from e
            scope = CgroupScope(self, unit_name, invocation_id, path)
        else:
            scope = ProcessGroupScope(self, unit_name, invocation_id)
            self._write_record(unit_name, invocation_id)
        self._scopes[unit_name] = scope
        return scope

    def cgroup_path(self, unit_name: str) -> Path | None:
        """Return where ``unit_name``'s cgroup is (whether it exists or not), or None without cgroups."""
        if self.kind == "cgroup" and self.parent is not None:
            return self.parent / (unit_name + _SUFFIX)
        return None

    def recorded_invocation(self, unit_name: str) -> str | None:
        """Return the INVOCATION_ID an earlier run recorded for ``unit_name`` (fallback mode), or None
        (no record, or a damaged one: recorded once as a warning naming the file)."""
        if self._records is None:
            return None
        return self._read_record(self._records / unit_name)

    def _write_record(self, unit_name: str, invocation_id: str) -> None:
        """Record the invocation id of ``unit_name``'s scope (fallback mode), replacing whatever is at
        its place (a damaged record, a folder). Cannot: a warning, the start goes on; only a later
        clean-up after a crash of hasupd then misses that scope's processes."""
        if self._records is None:
            return
        path = self._records / unit_name
        try:
            self._records.mkdir(parents=True, exist_ok=True)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            tmp = path.with_name(f".{unit_name}.tmp")
            tmp.write_text(invocation_id)
            tmp.replace(path)  # whole or not at all: a crash mid-write leaves no damaged record
        except OSError as error:
            log.warning(
                "%s: cannot write the scope record of %s: %s; after a crash of hasupd its processes are "
                "not found by their INVOCATION_ID",
                path,
                unit_name,
                error.strerror or error,
            )

    def _read_record(self, path: Path) -> str | None:
        """Return the invocation id in the scope record ``path``; None if there is none, or if it is
        damaged (unreadable, not UTF-8, empty, not one printable word): then a warning says so, once."""
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_RECORD + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            problem = error.strerror or str(error)
        else:
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                problem = "not UTF-8"
            else:
                if len(raw) > _MAX_RECORD:
                    problem = f"longer than {_MAX_RECORD} bytes"
                elif not text or not text.isprintable() or len(text.split()) != 1:
                    problem = "not an invocation id"
                else:
                    return text
        if path not in self._damaged:
            self._damaged.add(path)
            log.warning(
                "%s: damaged scope record (%s): the processes of that earlier start are not found by "
                "their INVOCATION_ID",
                path,
                problem,
            )
        return None

    def adopt(self, unit_name: str, invocation_id: str, pid: int) -> ScopeImpl:
        """Return the scope of a start that an earlier hasupd (or this one before a re-exec) made, with
        ``pid`` as its main process: its cgroup is taken as it is, nothing is killed or moved."""
        scope: ScopeImpl
        path = self.cgroup_path(unit_name)
        if path is not None:
            scope = CgroupScope(self, unit_name, invocation_id, path)
        else:
            scope = ProcessGroupScope(self, unit_name, invocation_id)
            self._write_record(unit_name, invocation_id)
        scope.attach(pid)
        self._scopes[unit_name] = scope
        return scope

    async def cleanup_stale(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Kill and remove what an earlier hasupd left behind, except the units in ``keep`` (to be
        adopted); return the unit names cleaned.

        cgroup: every ``*.service`` cgroup under our parent that no live scope owns. Fallback: the
        processes whose INVOCATION_ID is in a leftover scope record (one pass over /proc at startup).
        """
        cleaned: list[str] = []
        if self.kind == "cgroup" and self.parent is not None:
            for entry in sorted(self.parent.iterdir()):
                unit = entry.name.removesuffix(_SUFFIX)
                if (
                    entry.is_dir()
                    and entry.name.endswith(_SUFFIX)
                    and unit not in self._scopes
                    and unit not in keep
                ):
                    await _kill_and_remove_async(entry)
                    cleaned.append(unit)
            return cleaned
        if self._records is None or not self._records.is_dir():
            return cleaned
        stale: dict[bytes, Path] = {}
        damaged: list[Path] = []
        for p in self._records.iterdir():
            if p.name in self._scopes or p.name in keep:
                continue
            invocation = self._read_record(p)
            if invocation is None:
                damaged.append(p)  # recorded by _read_record; its processes cannot be told apart
            else:
                stale[f"INVOCATION_ID={invocation}".encode()] = p
        if stale:
            await kill_until_gone(lambda: pids_with_env(stale.keys()))
        for record in stale.values():
            record.unlink(missing_ok=True)
            cleaned.append(record.name)
        for record in damaged:
            try:
                if record.is_dir() and not record.is_symlink():
                    shutil.rmtree(record)
                else:
                    record.unlink(missing_ok=True)
            except OSError as error:  # it stays, and is reported again at the next start
                log.warning("%s: cannot remove a damaged scope record: %s", record, error.strerror)
        return sorted(cleaned)

    def close(self) -> None:
        """Kill what is still in any scope (hasupd is exiting: nothing may outlive it unwatched),
        remove the scopes, and remove the parent cgroup that ``detect`` created in the root layout."""
        for scope in list(self._scopes.values()):
            # Blocking is fine here: hasupd is exiting, and nothing may outlive it unwatched.
            if isinstance(scope, CgroupScope):
                _kill_and_remove(scope.path)
            else:
                kill_loop(scope.pids, block=True)
            scope.release()
        if self._owns_parent and self.parent is not None and not self._scopes:
            try:
                self.parent.rmdir()
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOENT):
                    raise

    def _mains(self) -> set[int]:
        return {s._leader for s in self._scopes.values() if s._leader is not None}

    def _forget(self, scope: ScopeImpl) -> None:
        if self._scopes.get(scope.unit_name) is scope:
            del self._scopes[scope.unit_name]
            if self._records is not None:
                (self._records / scope.unit_name).unlink(missing_ok=True)


def _find_own_cgroup() -> tuple[Path, bool] | str:
    """Return (our cgroup2 directory, whether it is the real root cgroup), or why there is none."""
    mount: Path | None = None
    mount_root = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                fields = left.split()
                # Octal escapes (\040 for a space) as the kernel writes them.
                point = fields[4].encode().decode("unicode_escape")
                if mount is None or point == "/sys/fs/cgroup":
                    mount, mount_root = Path(point), fields[3]
    if mount is None:
        return "no cgroup2 mount"
    with open("/proc/self/cgroup") as f:
        own = next((ln.strip()[3:] for ln in f if ln.startswith("0::")), None)
    if own is None:
        return "no cgroup2 entry in /proc/self/cgroup"
    rel = os.path.relpath(own, mount_root)
    if rel.startswith(".."):
        return f"our cgroup {own} is outside the cgroup2 mount {mount}"
    path = (mount / rel).resolve()
    # cgroup.type exists on every cgroup except the real root (also inside a cgroup namespace).
    return path, not (path / "cgroup.type").exists()


def _delegated(path: Path) -> bool:
    for attr in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, attr) == b"1":
                return True
        except OSError:
            continue
    return False


def _controllers(path: Path, file: str) -> set[str]:
    try:
        return set((path / file).read_text().split())
    except FileNotFoundError:
        return set()


def _enable_memory(path: Path) -> None:
    """Enable the memory controller for ``path``'s children when the kernel offers it (best effort:
    on hybrid hosts memory is bound to v1, and a cgroup with processes refuses controllers)."""
    if "memory" in _controllers(path, "cgroup.controllers") - _controllers(path, "cgroup.subtree_control"):
        try:
            _write(path / "cgroup.subtree_control", "+memory")
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM):
                raise


def _remove_pass(path: Path) -> bool:
    """Kill what is in the cgroup at ``path`` and remove it if empty; return True once it is gone."""
    _cgroup_kill(path)
    if _cgroup_populated(path):
        return False
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        return False
    return True


def _kill_and_remove(path: Path) -> None:
    """Kill everything in the cgroup at ``path`` and remove it; leave it (empty or not) after ~1 s.

    Sleeps between passes: only for hasupd's exit (``close``), when nothing else runs on the loop.
    """
    deadline = time.monotonic() + KILL_BOUND_SEC
    while not _remove_pass(path) and time.monotonic() <= deadline:
        time.sleep(KILL_RETRY_SEC)


async def _kill_and_remove_async(path: Path) -> None:
    """``_kill_and_remove`` that lets the event loop run between passes."""
    deadline = time.monotonic() + KILL_BOUND_SEC
    while not _remove_pass(path) and time.monotonic() <= deadline:
        await asyncio.sleep(KILL_RETRY_SEC)
