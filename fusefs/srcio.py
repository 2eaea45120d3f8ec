"""Blocking calls on SRC, off the trio loop when other requests are in flight.

Why not trio.to_thread: a hop there costs 115-190 us on this VM, and even a
bare thread pool that hands results back with run_sync_soon costs about
110 us at one request in flight and 55-70 us of CPU per call under load
(two wake-ups across CPUs and the GIL), more than a 4 KiB read of SRC
itself. So:

* With no other request in flight and none waiting in /dev/fuse, a call
  runs inline, as before: one request at a time pays no hop at all.
* Otherwise a read of an O_DIRECT descriptor (backing_io=direct) goes to the
  kernel as Linux native AIO (completion through an eventfd that trio waits
  on): no thread. The reads of one scheduler pass are submitted together in
  one io_submit: here one submit costs about 26 us of CPU (the virtio kick),
  16 in one submit about 5 us each.
* Name lookups, opens and directory listings take microseconds on a local
  filesystem (the dentry cache has them): they stay inline unless the file is
  on a network or FUSE filesystem (slow_metadata), where they go to threads too.
* A read of a file on a memory filesystem (tmpfs, ramfs) always runs inline:
  it is a copy, with nothing to wait for, and tmpfs has no RWF_NOWAIT (with
  a hop for each read, 4k QD16 on tmpfs made 7.7k IOPS at 158 us of CPU a
  request; inline, 44k at 22 us). Only a page the host swapped out waits
  (for the swap-in), and then every request waits with it, as with
  max_requests=1.
* A read of a cached descriptor is first tried inline with RWF_NOWAIT (the
  host page cache has it: no hop); once a filesystem refuses RWF_NOWAIT,
  it is not asked again. A write of at most INLINE_WRITE bytes runs inline
  too: the host page cache takes it in microseconds, and this mount's
  writes of one file go one at a time, so a hop for each would be paid in
  turn (ext4 has no RWF_NOWAIT for buffered writes). Only a read that would
  block, and other blocking calls (larger writes, fsync, truncate, open,
  directory listings), go to worker threads.

Each of these is decided per filesystem (st_dev, typed from mountinfo), not
per mount: SRC may hold other filesystems mounted inside it.

Tasks waiting here cannot be cancelled (the buffer belongs to the kernel
until the call completes); every call ends by itself, so unmount waits.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import queue
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import outcome
import trio

from fusefs.mountinfo import kernel_dev, mounts

log = logging.getLogger("tmemfs.srcio")

T = TypeVar("T")

_SYS_IO_SETUP, _SYS_IO_DESTROY, _SYS_IO_GETEVENTS, _SYS_IO_SUBMIT = 206, 207, 208, 209  # x86_64
_IOCB_CMD_PREAD, _IOCB_CMD_PREADV = 0, 7
_IOCB_FLAG_RESFD = 1
MAX_IOVECS = 64
INLINE_WRITE = 16 << 10  # bytes a write may have to run inline whatever else is in flight


class _Iocb(ctypes.Structure):
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32), ("aio_rw_flags", ctypes.c_int32),
                ("aio_lio_opcode", ctypes.c_uint16), ("aio_reqprio", ctypes.c_int16),
                ("aio_fildes", ctypes.c_uint32), ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64), ("aio_flags", ctypes.c_uint32),
                ("aio_resfd", ctypes.c_uint32)]


class _IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64),
                ("res2", ctypes.c_int64)]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_IOCB_SIZE = ctypes.sizeof(_Iocb)
_IOCB_VARYING_AT = _Iocb.aio_lio_opcode.offset  # opcode, reqprio, fildes, buf, nbytes, offset follow
_IOCB_VARYING = struct.Struct("<HhIQQq")
_IO_EVENT = struct.Struct("<QQqq")  # data, obj, res, res2


def pwrite_all(fd: int, view: memoryview, offset: int) -> int:
    """pwrite until done; short only where SRC took part (ENOSPC, EFBIG... after some bytes)."""
    done = 0
    while done < len(view):
        try:
            n = os.pwrite(fd, view[done:], offset + done)
        except OSError:
            if done == 0:
                raise
            break
        if n == 0:
            break
        done += n
    return done


class NotSubmitted(OSError):
    """io_submit did not take the read (its queue is full, or no AIO here)."""


def _cant_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class NativeAio:
    """Linux AIO reads (io_submit) completed on the trio loop through an eventfd.

    The iocbs, the array io_submit takes and the completion events live in ctypes arrays
    made once; each read writes its five varying fields with one struct.pack_into and each
    completion is read with one struct.unpack_from (a ctypes field access costs a Python
    object per field)."""

    def __init__(self, depth: int) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = self._libc.syscall
        self._ctx = ctypes.c_ulong(0)
        if self._syscall(_SYS_IO_SETUP, depth, ctypes.byref(self._ctx)) != 0:
            raise OSError(ctypes.get_errno(), "io_setup")
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.depth = depth
        self._iocbs = (_Iocb * depth)()
        self._iocb_bytes = memoryview(self._iocbs).cast("B")
        self._iovecs = [(_Iovec * MAX_IOVECS)() for _ in range(depth)]
        self._iovec_addrs = [ctypes.addressof(v) for v in self._iovecs]
        for slot in range(depth):  # what never changes: who it is, and the eventfd that tells
            iocb = self._iocbs[slot]
            iocb.aio_data = slot
            iocb.aio_flags = _IOCB_FLAG_RESFD
            iocb.aio_resfd = self._eventfd
        self._iocb_addrs = [ctypes.addressof(iocb) for iocb in self._iocbs]
        self._submitting = (ctypes.c_void_p * depth)()
        self._free = list(range(depth))
        self._waiting: dict[int, trio.lowlevel.Task] = {}
        self._events = (_IoEvent * depth)()
        self._event_bytes = memoryview(self._events).cast("B")
        self._no_wait = (ctypes.c_long * 2)(0, 0)
        self._queued: list[int] = []
        self._submitter = trio.lowlevel.ParkingLot()
        self.submits = 0
        self._pins: list[list[ctypes.c_char]] = [[] for _ in range(depth)]  # buffers the kernel is reading into

    def can_take(self, count: int) -> bool:
        return bool(self._free) and count <= MAX_IOVECS

    async def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        """Queue the read for the next submit; its result (or NotSubmitted) when it ends."""
        slot = self._free.pop()
        pins = self._pins[slot] = [ctypes.c_char.from_buffer(buf) for buf in buffers]
        if len(buffers) == 1:  # one buffer (a 4 KiB random read): a plain pread, no iovec
            opcode, address, length = _IOCB_CMD_PREAD, ctypes.addressof(pins[0]), len(buffers[0])
        else:
            iovecs = self._iovecs[slot]
            for n, (pin, buf) in enumerate(zip(pins, buffers, strict=True)):
                iovecs[n].base = ctypes.addressof(pin)
                iovecs[n].len = len(buf)
            opcode, address, length = _IOCB_CMD_PREADV, self._iovec_addrs[slot], len(buffers)
        _IOCB_VARYING.pack_into(self._iocb_bytes, slot * _IOCB_SIZE + _IOCB_VARYING_AT, opcode, 0, fd,
                                address, length, offset)
        self._waiting[slot] = trio.lowlevel.current_task()
        self._queued.append(slot)
        if len(self._queued) == 1:
            self._submitter.unpark()
        result: int = await trio.lowlevel.wait_task_rescheduled(_cant_abort)
        if result < 0:
            raise OSError(-result, os.strerror(-result))
        return result

    async def submit(self) -> None:
        """Submit what the tasks of a scheduler pass queued, in one io_submit."""
        addrs, submitting = self._iocb_addrs, self._submitting
        while True:
            if not self._queued:
                await self._submitter.park()
            await trio.lowlevel.cancel_shielded_checkpoint()  # the other tasks of this pass queue theirs
            queued, self._queued = self._queued, []
            self.submits += 1
            for n, slot in enumerate(queued):
                submitting[n] = addrs[slot]
            done = self._syscall(_SYS_IO_SUBMIT, self._ctx, len(queued), submitting)
            error = ctypes.get_errno() if done < 0 else 0
            for slot in queued[max(done, 0):]:  # not taken: the caller reads another way
                self._free.append(slot)
                self._pins[slot] = []
                trio.lowlevel.reschedule(self._waiting.pop(slot),
                                         outcome.Error(NotSubmitted(error or 11, "io_submit took only part")))

    async def reap(self) -> None:
        """Hand completions back to their tasks, for as long as the mount lives."""
        while True:
            await trio.lowlevel.wait_readable(self._eventfd)
            try:
                os.eventfd_read(self._eventfd)
            except BlockingIOError:
                continue
            self._collect()

    def _collect(self) -> None:
        events, unpack = self._event_bytes, _IO_EVENT.unpack_from
        while self._waiting:
            got = self._syscall(_SYS_IO_GETEVENTS, self._ctx, 0, self.depth, self._events, self._no_wait)
            if got <= 0:
                return
            for n in range(got):
                slot, _obj, res, _res2 = unpack(events, n * _IO_EVENT.size)
                self._free.append(slot)
                self._pins[slot] = []
                trio.lowlevel.reschedule(self._waiting.pop(slot), outcome.Value(res))

    def close(self) -> None:
        """After every read has completed (io_destroy would wait for them otherwise)."""
        self._syscall(_SYS_IO_DESTROY, self._ctx)
        os.close(self._eventfd)


class WorkerThreads:
    """A small pool of threads for blocking calls; results go back through run_sync_soon."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._jobs: queue.SimpleQueue[tuple[trio.lowlevel.Task, Callable[..., Any], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._token: trio.lowlevel.TrioToken | None = None

    def _start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        for n in range(self.count):
            thread = threading.Thread(target=self._work, name=f"tmemfs-io-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        jobs, token, reschedule = self._jobs, self._token, trio.lowlevel.reschedule
        assert token is not None
        while (job := jobs.get()) is not None:
            task, fn, args = job
            token.run_sync_soon(reschedule, task, outcome.capture(fn, *args))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._threads:
            self._start()
        self._jobs.put((trio.lowlevel.current_task(), fn, args))
        result: T = await trio.lowlevel.wait_task_rescheduled(_cant_abort)
        return result

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()


NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre",
                       "afs", "fuse", "fuseblk", "virtiofs", "beegfs", "gpfs", "ocfs2", "gfs2"}
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


def filesystem_type(st_dev: int) -> str:
    """The type of the filesystem on device `st_dev`, from mountinfo ('' if it lists no such
    device: a btrfs subvolume's, for one)."""
    want = kernel_dev(os.major(st_dev), os.minor(st_dev))
    try:
        for mount in mounts():
            if mount.dev == want:
                return mount.fstype
    except OSError:
        pass
    return ""


@dataclass(slots=True)
class Device:
    """How calls on one of SRC's filesystems run. Per device, not per mount: SRC may hold
    other filesystems (an ext4 inside a tmpfs SRC must not be read on the loop; a tmpfs
    inside an ext4 SRC must not cost the ext4 its RWF_NOWAIT)."""

    memory: bool  # tmpfs, ramfs: a read is a copy, so it always runs inline
    slow_metadata: bool  # network or FUSE: lookups, opens and listings leave the loop too
    nowait: bool = True  # RWF_NOWAIT worth trying (False once the filesystem refused it)

    @classmethod
    def of_type(cls, kind: str) -> Device:
        return cls(kind in MEMORY_FILESYSTEMS, kind in NETWORK_FILESYSTEMS or kind.startswith("fuse."))


class SrcIO:
    """Where each blocking call on SRC runs (see the module docstring), with its counters."""

    def __init__(self, threads: int, device_type: Callable[[int], str] = filesystem_type) -> None:
        self._device_type = device_type  # st_dev -> filesystem type (tests give their own)
        self._devices: dict[int, Device] = {}
        self.serial = threads <= 1  # max_requests=1: nothing can run meanwhile, so nothing leaves the loop
        self.in_flight = 0  # requests being served (the handlers count themselves in and out)
        self._threads = WorkerThreads(max(1, threads))
        self._aio: NativeAio | None = None  # made by start(), whose tasks submit and reap for it
        self._fuse_poll: select.poll | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.inline = self.threaded = self.aio = self.nowait = 0
        self.peak_in_flight = self.in_flight  # the most requests in flight at once since (set by the handlers)
        if self._aio is not None:
            self._aio.submits = 0

    def watch_requests(self, fuse_fd: int | None) -> None:
        """Know of requests still queued in the kernel, not only those being served."""
        if fuse_fd is not None:
            self._fuse_poll = select.poll()
            self._fuse_poll.register(fuse_fd, select.POLLIN)

    def start(self, nursery: trio.Nursery) -> None:
        if self.serial:
            return  # nothing ever leaves the loop
        try:
            self._aio = NativeAio(self._threads.count)
        except (OSError, AttributeError) as exc:
            log.info("no native AIO here (%s): O_DIRECT reads under load go to threads", exc)
            return
        nursery.start_soon(self._aio.reap)
        nursery.start_soon(self._aio.submit)

    def close(self) -> None:
        self._threads.close()
        if self._aio is not None:
            self._aio.close()
            self._aio = None

    def busy(self) -> bool:
        """Whether another request is in flight or waiting: then a blocking call must not stall it."""
        if self.serial:
            return False
        if self.in_flight > 1:
            return True
        return self._fuse_poll is not None and bool(self._fuse_poll.poll(0))

    def device(self, dev: int) -> Device:
        """How calls on the filesystem of device `dev` (st_dev) run, learnt on first use."""
        found = self._devices.get(dev)
        if found is None:
            kind = self._device_type(dev)
            found = self._devices[dev] = Device.of_type(kind)
            log.debug("SRC device %d:%d is %s: %s", os.major(dev), os.minor(dev), kind or "of unknown type", found)
        return found

    async def preadv(self, fd: int, buffers: list[memoryview], offset: int, dev: int) -> int:
        """os.preadv of a descriptor of a file on device `dev`, without holding up other requests."""
        device = self._devices.get(dev) or self.device(dev)  # (every read: the lookup inline)
        if device.memory or not self.busy():
            self.inline += 1
            return os.preadv(fd, buffers, offset)
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            aio = self._aio
            if aio is not None and aio.can_take(len(buffers)):
                try:
                    got = await aio.preadv(fd, buffers, offset)
                except NotSubmitted:
                    pass  # to the threads
                else:
                    self.aio += 1
                    return got
        elif device.nowait:
            want = sum(map(len, buffers))
            try:
                got = os.preadv(fd, buffers, offset, os.RWF_NOWAIT)
            except OSError as exc:  # it would block (EAGAIN), or no RWF_NOWAIT here: the threads read it
                device.nowait = exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS)
                got = -1
            if got == want:
                self.nowait += 1
                return got
        self.threaded += 1
        return await self._threads.run(os.preadv, fd, buffers, offset)

    async def pwrite(self, fd: int, view: memoryview, offset: int) -> int:
        """pwrite_all, without holding up other requests: inline up to INLINE_WRITE bytes (see
        the module docstring; with a hop each, 4k randwrite QD16 fell from 77k to 4k IOPS), a
        larger write under load on a worker thread."""
        if len(view) <= INLINE_WRITE or not self.busy():
            self.inline += 1
            return pwrite_all(fd, view, offset)
        self.threaded += 1
        return await self._threads.run(pwrite_all, fd, view, offset)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args), on a worker thread if other requests are in flight or waiting."""
        if not self.busy():
            self.inline += 1
            return fn(*args)
        self.threaded += 1
        return await self._threads.run(fn, *args)

    async def call_meta(self, dev: int, fn: Callable[..., T], *args: Any) -> T:
        """A lookup, open or listing on device `dev`: call() on a network or FUSE filesystem,
        else inline."""
        if self.device(dev).slow_metadata:
            return await self.call(fn, *args)
        return fn(*args)

    def stats(self) -> dict[str, int]:
        return {"backing.inline_calls": self.inline, "backing.thread_calls": self.threaded,
                "backing.aio_reads": self.aio, "backing.nowait_reads": self.nowait,
                "backing.aio_submits": self._aio.submits if self._aio is not None else 0}
