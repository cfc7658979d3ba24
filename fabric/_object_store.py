"""The per-node object store: one blob file per object on shared memory.

A node's store is a directory on tmpfs (normally ``/dev/shm/fabric-<node>-<rand>``)
with one subdirectory per tenant, mode 0700. Each object is a file named by the hex
of its id holding exactly one object blob (see :mod:`fabric._serialization`).

Writers -- the tenant's drivers and workers through :class:`StoreDirectory`, or the
agent itself through :class:`ObjectStore` -- create ``<hex>.tmp-<random>``, fill it
and rename it to ``<hex>``. The rename is the seal: a reader that can open ``<hex>``
sees a complete, immutable blob. Readers map the file read-only and deserialize from
the mapping, so large values are shared rather than copied. Freeing an object is an
``unlink``; mappings that readers already hold stay valid until they are dropped,
which is POSIX semantics and needs no coordination.

Clients write into their own tenant's directory directly, so the agent trusts
nothing about a file until :meth:`ObjectStore.adopt` has checked it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from fabric._serialization import (
    HEADER_SIZE,
    SerializationError,
    Serialized,
    _pwrite_all,
    deserialize,
    read_header,
)
from fabric.exceptions import FabricError, OutOfMemoryError

__all__ = [
    "IncomingObject",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreFull",
    "StoreDirectory",
    "default_store_root",
]

_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MAX_ID_BYTES = 64
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class ObjectStoreError(FabricError):
    """An object store operation failed or was refused."""


class ObjectStoreFull(ObjectStoreError, OutOfMemoryError):
    """Storing the object would exceed the store's capacity (or tmpfs ran out of space)."""


def default_store_root() -> Path:
    """Where node stores go: ``/dev/shm`` when usable, else the temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def object_file_name(object_id: bytes) -> str:
    """The file name of an object: the lowercase hex of its id."""
    if not isinstance(object_id, bytes):
        raise ObjectStoreError(f"object ids are bytes, not {type(object_id).__name__}")
    if not 0 < len(object_id) <= _MAX_ID_BYTES:
        raise ObjectStoreError(f"object id must be 1 to {_MAX_ID_BYTES} bytes long")
    return object_id.hex()


def _temp_name(name: str) -> str:
    return f"{name}.tmp-{secrets.token_hex(8)}"


def _store_os_error(action: str, name: str, exc: OSError) -> ObjectStoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ObjectStoreFull(f"no space left to {action} {name}: {exc.strerror}")
    return ObjectStoreError(f"cannot {action} {name}: {exc}")


def _write_sealed(
    directory: Path,
    dir_fd: int | None,
    name: str,
    fill: Callable[[int], object],
) -> None:
    """Create ``name`` atomically: fill a fresh private temp file, then rename it.

    With ``dir_fd`` set, names resolve relative to that descriptor, so a directory
    swapped for a symlink after it was opened cannot redirect the write.
    """
    temp = _temp_name(name)

    def where(n: str) -> str:
        return n if dir_fd is not None else str(directory / n)

    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(where(temp), flags, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise _store_os_error("create", name, exc) from exc
    try:
        try:
            # The creation mode is filtered through the umask; make 0600 certain.
            os.fchmod(fd, 0o600)
            fill(fd)
        finally:
            os.close(fd)
        os.rename(where(temp), where(name), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(where(temp), dir_fd=dir_fd)
        if isinstance(exc, OSError):
            raise _store_os_error("write", name, exc) from exc
        raise


def _map_read_only(fd: int, what: str) -> memoryview:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ObjectStoreError(f"{what} is not a regular file")
    if st.st_size < HEADER_SIZE:
        raise ObjectStoreError(f"{what} is too small ({st.st_size} bytes) to be an object")
    return memoryview(mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ))


def _validate_mapped(fd: int, size: int) -> None:
    """Check the header of the blob in ``fd``; only its first pages are touched."""
    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        read_header(mapping)
    finally:
        # A SerializationError's traceback may still reference a view of the mapping,
        # in which case close() refuses; the mapping then goes when the error does.
        with contextlib.suppress(BufferError):
            mapping.close()


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B" or view.itemsize != 1:
        view = view.cast("B")
    return view


class StoreDirectory:
    """The files of one tenant on one node: ``<root>/<tenant>/``, mode 0700.

    This is the client side (the tenant's drivers and workers): it writes sealed
    object files and maps them for reading. The agent creates the directory.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ObjectStoreError(f"store directory {path} is not accessible: {exc}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise ObjectStoreError(f"store directory {path} is not a directory")
        self._path = path

    @property
    def directory(self) -> Path:
        return self._path

    def path(self, object_id: bytes) -> Path:
        """Where the sealed file of ``object_id`` lives."""
        return self._path / object_file_name(object_id)

    def put(self, object_id: bytes, serialized: Serialized) -> int:
        """Write and seal the object; return its size in bytes.

        The caller then reports the object to the agent, which adopts it.
        """
        name = object_file_name(object_id)
        _write_sealed(self._path, None, name, serialized.write_to_fd)
        return serialized.total_size

    def put_blob(self, object_id: bytes, blob: bytes | bytearray | memoryview) -> int:
        """Write and seal an already encoded blob; return its size."""
        view = _as_bytes_view(blob)
        name = object_file_name(object_id)

        def fill(fd: int) -> None:
            _pwrite_all(fd, view, 0)

        _write_sealed(self._path, None, name, fill)
        return view.nbytes

    def open_blob(self, object_id: bytes) -> memoryview:
        """A read-only mapping of the object's blob; valid even after the file is freed."""
        name = object_file_name(object_id)
        try:
            fd = os.open(self._path / name, _READ_FLAGS)
        except FileNotFoundError:
            raise ObjectStoreError(f"object {name} is not in the store") from None
        except OSError as exc:
            raise ObjectStoreError(f"cannot open object {name}: {exc}") from exc
        try:
            return _map_read_only(fd, f"object {name}")
        finally:
            os.close(fd)

    def get(self, object_id: bytes) -> object:
        """The object's value, deserialized from a read-only mapping without copying."""
        return deserialize(self.open_blob(object_id))


class _Tenant:
    __slots__ = ("dir_fd", "directory", "objects", "used")

    def __init__(self, directory: StoreDirectory, dir_fd: int) -> None:
        self.directory = directory
        self.dir_fd = dir_fd
        self.objects: dict[bytes, int] = {}
        self.used = 0


class IncomingObject:
    """An object being received in chunks from another node.

    Chunks may arrive in any order and may be resent; :meth:`commit` checks that
    every byte was written and that the blob is valid before sealing it. Use as a
    context manager to abort automatically unless committed.
    """

    def __init__(
        self,
        store: ObjectStore,
        tenant: str,
        object_id: bytes,
        total_size: int,
        dir_fd: int,
        temp_name: str,
        fd: int,
    ) -> None:
        self._store = store
        self.tenant = tenant
        self.object_id = object_id
        self.total_size = total_size
        self._dir_fd = dir_fd
        self._temp_name = temp_name
        self._fd: int | None = fd
        self._covered: list[tuple[int, int]] = []  # disjoint, sorted [start, end) ranges

    @property
    def done(self) -> bool:
        """Whether the transfer was committed or aborted."""
        return self._fd is None

    @property
    def bytes_received(self) -> int:
        return sum(end - start for start, end in self._covered)

    def _note(self, start: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for s, e in self._covered:
            if e < start or s > end:
                merged.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        merged.append((start, end))
        merged.sort()
        self._covered = merged

    def write(self, offset: int, chunk: bytes | bytearray | memoryview) -> None:
        """Write ``chunk`` at ``offset`` of the blob."""
        if self._fd is None:
            raise ObjectStoreError("transfer is already finished")
        view = _as_bytes_view(chunk)
        if offset < 0 or offset + view.nbytes > self.total_size:
            raise ObjectStoreError(
                f"chunk [{offset}, {offset + view.nbytes}) lies outside the "
                f"{self.total_size}-byte object"
            )
        if not view.nbytes:
            return
        try:
            _pwrite_all(self._fd, view, offset)
        except OSError as exc:
            raise _store_os_error("write", self.object_id.hex(), exc) from exc
        self._note(offset, offset + view.nbytes)

    def commit(self) -> int:
        """Validate and seal the object, then account for it; return its size."""
        fd = self._fd
        if fd is None:
            raise ObjectStoreError("transfer is already finished")
        try:
            if self._covered != [(0, self.total_size)]:
                missing = self.total_size - self.bytes_received
                raise ObjectStoreError(f"transfer incomplete: {missing} bytes never arrived")
            try:
                _validate_mapped(fd, self.total_size)
            except SerializationError as exc:
                raise ObjectStoreError(f"received object is not a valid blob: {exc}") from exc
            name = object_file_name(self.object_id)
            try:
                os.rename(self._temp_name, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            except OSError as exc:
                raise _store_os_error("seal", name, exc) from exc
        except BaseException:
            self.abort()
            raise
        os.close(fd)
        self._fd = None
        self._store._finish_receive(self, committed=True)
        return self.total_size

    def abort(self) -> None:
        """Drop the partial object. Idempotent."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self._temp_name, dir_fd=self._dir_fd)
        self._store._finish_receive(self, committed=False)

    def __enter__(self) -> IncomingObject:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class ObjectStore:
    """The agent's view of the node store: tenant directories, accounting and freeing.

    Meant for single-threaded use from the agent's event loop. Accounting counts only
    objects the agent wrote itself or adopted after checking them; files a client
    wrote but never reported are invisible to it.
    """

    def __init__(
        self,
        root: Path,
        capacity_bytes: int | None = None,
        tenant_owner: Callable[[str], tuple[int, int]] | None = None,
    ) -> None:
        """`tenant_owner`, when the agent runs workers under per-tenant uids, gives the
        (uid, gid) that owns each tenant's directory and objects, so that tenant's
        workers can read them and nobody else's can."""
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError("capacity_bytes must not be negative")
        root = Path(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Insisting on a fresh directory means nobody else (in a world-writable
            # /dev/shm) can have planted files or links in it beforehand.
            os.mkdir(root, 0o700)
        except FileExistsError:
            raise ObjectStoreError(f"store root {root} already exists") from None
        # With per-tenant uids, workers must reach their own directory by name (x),
        # never list the root (r) to learn which tenants exist.
        os.chmod(root, 0o711 if tenant_owner is not None else 0o700)
        self._tenant_owner = tenant_owner
        self._root = root
        self._capacity = capacity_bytes
        self._tenants: dict[str, _Tenant] = {}
        self._used = 0
        # Bytes promised to transfers in progress; they count against capacity so
        # that concurrent receives cannot together overshoot it.
        self._reserved = 0
        self._incoming: set[IncomingObject] = set()
        self._closed = False

    # -- properties ---------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._root

    @property
    def capacity_bytes(self) -> int | None:
        return self._capacity

    def used_bytes(self) -> int:
        """Bytes of all accounted objects."""
        return self._used

    def tenant_bytes(self, tenant: str) -> int:
        """Bytes of `tenant`'s accounted objects."""
        t = self._tenants.get(tenant)
        return t.used if t is not None else 0

    def bytes_by_tenant(self) -> dict[str, int]:
        """Bytes of accounted objects per tenant (every tenant with a directory)."""
        return {name: t.used for name, t in self._tenants.items()}

    # -- tenants ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ObjectStoreError("object store is closed")

    def _tenant(self, tenant: str, create: bool) -> _Tenant:
        self._check_open()
        known = self._tenants.get(tenant)
        if known is not None:
            return known
        if not isinstance(tenant, str) or not _TENANT_NAME.fullmatch(tenant):
            raise ObjectStoreError(f"invalid tenant name {tenant!r}")
        if not create:
            raise ObjectStoreError(f"tenant {tenant} has no store directory on this node")
        path = self._root / tenant
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700, follow_symlinks=False)
            dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            if self._tenant_owner is not None:
                os.fchown(dir_fd, *self._tenant_owner(tenant))
        except OSError as exc:
            raise ObjectStoreError(f"cannot create store directory for {tenant}: {exc}") from exc
        entry = _Tenant(StoreDirectory(path), dir_fd)
        self._tenants[tenant] = entry
        return entry

    def tenant_directory(self, tenant: str) -> StoreDirectory:
        """The tenant's directory, created (0700) on first use."""
        return self._tenant(tenant, create=True).directory

    # -- accounting -----------------------------------------------------------------

    def _check_capacity(self, tenant: str, name: str, additional: int) -> None:
        # Beyond capacity we refuse outright; spilling to disk is future work.
        if self._capacity is None or additional <= 0:
            return
        if self._used + self._reserved + additional > self._capacity:
            raise ObjectStoreFull(
                f"storing {name} for {tenant} needs {additional} more bytes; "
                f"{self._used} used and {self._reserved} reserved of {self._capacity}"
            )

    def _account(self, t: _Tenant, object_id: bytes, size: int) -> None:
        old = t.objects.get(object_id, 0)
        t.objects[object_id] = size
        t.used += size - old
        self._used += size - old

    def _unaccount(self, t: _Tenant, object_id: bytes) -> None:
        old = t.objects.pop(object_id, 0)
        t.used -= old
        self._used -= old

    # -- writing --------------------------------------------------------------------

    def adopt(self, tenant: str, object_id: bytes, size: int | None = None) -> int:
        """Account for an object a client of ``tenant`` reports having sealed.

        The entry must be a regular file (not a symlink or hard link) in that tenant's
        own directory holding a valid blob of exactly ``size`` bytes. A rejected entry
        is removed, so that a client cannot occupy memory that was never accounted.
        Returns the size.
        """
        t = self._tenant(tenant, create=False)
        name = object_file_name(object_id)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=t.dir_fd)
        except FileNotFoundError:
            raise ObjectStoreError(f"object {name} of {tenant} was never sealed") from None
        except OSError as exc:
            # ELOOP: a symlink. Anything else unopenable is just as unusable.
            self._discard(t, object_id, name)
            raise ObjectStoreError(f"refusing object {name} of {tenant}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectStoreError(f"refusing object {name} of {tenant}: not a regular file")
            if st.st_nlink != 1:
                raise ObjectStoreError(
                    f"refusing object {name} of {tenant}: it has {st.st_nlink} links"
                )
            if size is not None and st.st_size != size:
                raise ObjectStoreError(
                    f"refusing object {name} of {tenant}: reported {size} bytes, "
                    f"file has {st.st_size}"
                )
            if st.st_size < HEADER_SIZE:
                raise ObjectStoreError(
                    f"refusing object {name} of {tenant}: {st.st_size} bytes is too small"
                )
            try:
                _validate_mapped(fd, st.st_size)
            except SerializationError as exc:
                raise ObjectStoreError(
                    f"refusing object {name} of {tenant}: invalid blob: {exc}"
                ) from exc
            actual = st.st_size
            self._check_capacity(tenant, name, actual - t.objects.get(object_id, 0))
            self._give_to_tenant(fd, tenant)
        except ObjectStoreError:
            self._discard(t, object_id, name)
            raise
        finally:
            os.close(fd)
        self._account(t, object_id, actual)
        return actual

    def _give_to_tenant(self, fd: int, tenant: str) -> None:
        # A driver on this host may have written it as another user: hand it to the
        # tenant's uid so the tenant's workers, and only they, can map it.
        if self._tenant_owner is not None:
            os.fchown(fd, *self._tenant_owner(tenant))

    def _discard(self, t: _Tenant, object_id: bytes, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=t.dir_fd)
        self._unaccount(t, object_id)

    def put_blob(self, tenant: str, object_id: bytes, blob: bytes | bytearray | memoryview) -> int:
        """Store a blob the agent received whole (e.g. inline); return its size."""
        t = self._tenant(tenant, create=True)
        name = object_file_name(object_id)
        view = _as_bytes_view(blob)
        try:
            read_header(view)
        except SerializationError as exc:
            raise ObjectStoreError(f"refusing object {name} of {tenant}: {exc}") from exc
        self._check_capacity(tenant, name, view.nbytes - t.objects.get(object_id, 0))

        def fill(fd: int) -> None:
            _pwrite_all(fd, view, 0)
            self._give_to_tenant(fd, tenant)

        _write_sealed(t.directory.directory, t.dir_fd, name, fill)
        self._account(t, object_id, view.nbytes)
        return view.nbytes

    def begin_receive(self, tenant: str, object_id: bytes, total_size: int) -> IncomingObject:
        """Start receiving an object of ``total_size`` bytes in chunks."""
        t = self._tenant(tenant, create=True)
        name = object_file_name(object_id)
        if total_size < HEADER_SIZE:
            raise ObjectStoreError(f"object {name} cannot be {total_size} bytes long")
        self._check_capacity(tenant, name, total_size)
        temp = _temp_name(name)
        # Read-write because commit() maps the file to validate the header.
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(temp, flags, 0o600, dir_fd=t.dir_fd)
        except OSError as exc:
            raise _store_os_error("create", name, exc) from exc
        try:
            os.fchmod(fd, 0o600)
            self._give_to_tenant(fd, tenant)
            os.ftruncate(fd, total_size)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=t.dir_fd)
            raise _store_os_error("allocate", name, exc) from exc
        incoming = IncomingObject(self, tenant, object_id, total_size, t.dir_fd, temp, fd)
        self._reserved += total_size
        self._incoming.add(incoming)
        return incoming

    def _finish_receive(self, incoming: IncomingObject, committed: bool) -> None:
        if incoming not in self._incoming:
            return
        self._incoming.discard(incoming)
        self._reserved -= incoming.total_size
        if committed:
            t = self._tenants[incoming.tenant]
            self._account(t, incoming.object_id, incoming.total_size)

    # -- reading and freeing ------------------------------------------------------

    def contains(self, tenant: str, object_id: bytes) -> bool:
        """Whether the object is stored and accounted for ``tenant``."""
        t = self._tenants.get(tenant)
        return t is not None and object_id in t.objects

    def size(self, tenant: str, object_id: bytes) -> int:
        """The accounted size of the object."""
        name = object_file_name(object_id)
        t = self._tenants.get(tenant)
        if t is None or object_id not in t.objects:
            raise ObjectStoreError(f"object {name} of {tenant} is not in the store")
        return t.objects[object_id]

    def open_blob(self, tenant: str, object_id: bytes) -> memoryview:
        """A read-only mapping of an accounted object's blob."""
        name = object_file_name(object_id)
        t = self._tenants.get(tenant)
        if t is None or object_id not in t.objects:
            raise ObjectStoreError(f"object {name} of {tenant} is not in the store")
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=t.dir_fd)
        except OSError as exc:
            raise ObjectStoreError(f"cannot open object {name} of {tenant}: {exc}") from exc
        try:
            return _map_read_only(fd, f"object {name} of {tenant}")
        finally:
            os.close(fd)

    def iter_chunks(
        self, tenant: str, object_id: bytes, chunk_size: int = 4 << 20
    ) -> Iterator[memoryview]:
        """The object's blob as consecutive read-only slices, for sending to another node.

        The file is mapped now, not on first iteration, so a missing object fails here
        and a delete that happens mid-transfer does not cut the transfer short.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        blob = self.open_blob(tenant, object_id)

        def chunks() -> Iterator[memoryview]:
            for offset in range(0, blob.nbytes, chunk_size):
                yield blob[offset : offset + chunk_size]

        return chunks()

    def delete(self, tenant: str, object_id: bytes) -> None:
        """Free the object. Readers holding a mapping keep valid data. Idempotent."""
        t = self._tenants.get(tenant)
        if t is None or self._closed:
            return
        name = object_file_name(object_id)
        try:
            os.unlink(name, dir_fd=t.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ObjectStoreError(f"cannot delete object {name} of {tenant}: {exc}") from exc
        self._unaccount(t, object_id)

    def close(self) -> None:
        """Abort transfers and remove the whole store directory. Idempotent."""
        if self._closed:
            return
        for incoming in list(self._incoming):
            incoming.abort()
        self._closed = True
        for t in self._tenants.values():
            os.close(t.dir_fd)
        self._tenants.clear()
        self._used = 0
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
