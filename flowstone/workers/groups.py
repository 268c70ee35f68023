"""Process groups: what a handler starts dies with its worker, whoever kills the worker.

Each worker leads its own process group (the pool spawns it with ``start_new_session``), and
every process a handler starts (``subprocess``, ``multiprocessing``, a shell pipeline) inherits
that group. Killing the worker alone would leave those processes running forever, so:

- the pool kills the whole group each time it ends a worker (close, crash, recycling, timeout),
  and does it *before* it reaps the worker: while the worker is an unreaped zombie the kernel
  cannot hand its pid, hence its group id, to anybody else, so the signal cannot hit a stranger;
- the worker forks a *guard* (:func:`start_group_guard`), a tiny process in the same group that
  waits for the worker to die, by any cause, and then SIGKILLs the group, itself included. It
  covers what the pool cannot: a pool or pool server that was SIGKILLed (its workers die by the
  parent-death signal, the guard sees it and takes the grandchildren along), and a pool that
  never ran its cleanup. It also watches the pool's pid, so a worker whose parent-death signal
  is unavailable (not Linux) or was never armed does not outlive the pool either;
- ``flowstone pool reap`` (:mod:`flowstone.workers.registry`) finds the groups whose worker is
  gone when even the guard did not get to act (it was SIGKILLed alone, or the host ran out of
  processes), using :func:`orphaned_group_members`.

What this does not cover: a grandchild that leaves the group on purpose (``setsid``,
``start_new_session=True``, a daemon's double fork) is out of reach of a group signal; only a
cgroup (systemd, a container) contains those.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys

GUARD_NAME = b"flowstone-guard"  # its name in ps/top (the command line stays the worker's)
GUARD_POLL_S = 1.0  # how often the guard also checks its parent and the pool by pid
_CREATE_TIME_TOLERANCE_S = 0.05
_GUARD_FD = 3


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal every process of group ``pgid``; False when the group is already empty."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _set_name(name: bytes) -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _guard(read_fd: int, worker_pid: int, pool_pid: int | None, poll_s: float) -> None:
    """The guard's whole life: wait until the worker (or the pool) is gone, then kill the group.

    It ignores SIGTERM and SIGINT, so a gentle stop of the group (SIGTERM, Ctrl-C) stops the
    worker first and the guard then SIGKILLs whatever ignored that signal.
    """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    _set_name(GUARD_NAME)
    # Hold nothing of the worker's: a copy of the worker's stdout pipe kept here would hide the
    # worker's death from the pool, a copy of its stdin would let writes to a dead worker succeed.
    if read_fd != _GUARD_FD:
        os.dup2(read_fd, _GUARD_FD)
    os.closerange(_GUARD_FD + 1, max(_GUARD_FD + 2, os.sysconf("SC_OPEN_MAX")))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2 and devnull != _GUARD_FD:
        os.close(devnull)
    poller = select.poll()
    poller.register(_GUARD_FD, select.POLLIN | select.POLLHUP | select.POLLERR)
    while os.getppid() == worker_pid and (pool_pid is None or _pid_exists(pool_pid)):
        # The worker holds the pipe's only write end and never writes: any event is its death.
        # (A handler's fork() without exec copies that end; the ppid check then still notices.)
        if poller.poll(poll_s * 1000.0):
            break
    kill_group(os.getpgrp())  # the worker's group, this guard included


def start_group_guard(pool_pid: int | None = None, poll_s: float = GUARD_POLL_S) -> int | None:
    """Fork the guard of this worker's group; returns the descriptor this process must keep open
    for as long as it lives (its closing at exit is what wakes the guard), or None without one.

    Only a process that leads its own group gets a guard: killing the group of a worker started
    by hand inside someone's shell group would kill that shell too. Call it while the process
    has one thread (before the bridge loads): a fork then copies no lock held by another thread.
    """
    if not hasattr(os, "fork") or os.getpgrp() != os.getpid():
        return None
    read_fd, write_fd = os.pipe()  # not inheritable: exec'ed grandchildren never get the end
    worker_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the guard
        try:
            os.close(write_fd)
            _guard(read_fd, worker_pid, pool_pid, poll_s)
        finally:
            os._exit(0)
    os.close(read_fd)
    return write_fd


def group_of(pid: int) -> tuple[int, int] | None:
    """(process group, session) of a live pid, or None once it is gone."""
    try:
        return os.getpgid(pid), os.getsid(pid)
    except (ProcessLookupError, PermissionError, OSError):
        return None


def orphaned_group_members(pgid: int, leader_create_time: float | None) -> list[int]:
    """Live processes still in the group a dead worker led, proven to be that group's.

    A group id is the pid of the worker that created it. While any member lives the kernel never
    reuses that number, so processes found in group ``pgid`` are the worker's as long as nobody
    else created a group with the same number after the whole group died. Three checks rule that
    out: no live (non-zombie) process holds pid ``pgid`` (it would be the worker, not orphaned,
    or the number's new owner); the members are in session ``pgid`` too (the worker started a
    session); and none of them started before the worker (no process can join a session, only be
    born into it, so every member of the worker's session is younger than the worker).
    """
    import psutil

    if leader_create_time is None:
        return []
    try:
        leader = psutil.Process(pgid)
        if leader.status() != psutil.STATUS_ZOMBIE:
            return []  # the worker is alive (not orphaned) or its pid now belongs to someone else
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        return []
    members = []
    for pid in psutil.pids():
        if pid == pgid or group_of(pid) != (pgid, pgid):
            continue
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.create_time() + _CREATE_TIME_TOLERANCE_S < float(leader_create_time):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        members.append(pid)
    return members
