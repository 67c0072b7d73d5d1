"""Where weight files are looked for, how every output file is written (a temporary name in the
same folder, then a rename: a crash or a full disk never leaves a half-written file under the
final name, and the temporary file is removed when writing fails), how torch files are read
(their checksums verified, nothing but tensors and plain data unpickled), the lock that gives a
file one writer at a time, and digests that say which weights or statistics a number came from."""

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import socket
import tempfile
import time
import zipfile

import torch


ZIP_MAGIC = b"PK\x03\x04"


class UnreadableFileError(ValueError):
    """A file that cannot be read as what it should hold; the message says which and why."""


class ModelFileError(UnreadableFileError):
    """A file that cannot be turned into the network asked for (a teacher, a student, a detector)."""


class TeacherLoadError(ModelFileError):
    """A teacher file that cannot be turned into a teacher."""


class StudentLoadError(ModelFileError):
    """A student checkpoint that cannot be turned into a PID student."""


def weight_search_dirs():
    """Folders searched for downloaded weights when no path is given: ./model_zoo, then torch's hub cache."""
    return [os.path.join(os.getcwd(), "model_zoo"), os.path.join(torch.hub.get_dir(), "checkpoints")]


def find_weight_file(names):
    """The first file of `names` (in order of preference) in the weight search folders, or None."""
    for folder in weight_search_dirs():
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error_in(error):
    """The OSError (with a reason) in an exception's chain: torch reports a full disk as a RuntimeError
    caused, somewhere down the chain, by the OSError."""
    while error is not None and not (isinstance(error, OSError) and error.strerror):
        error = error.__cause__ or error.__context__
    return error


def _io_error(path, error):
    """One OSError naming the file and the cause of a failed write."""
    cause = _os_error_in(error)
    return OSError(cause.errno, f"cannot write {path}: {cause.strerror}")


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path (same folder, same extension) to write; rename it to `path` on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp" + os.path.splitext(path)[1],
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the final file follows the user's umask
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _os_error_in(e):  # a full disk, a permission or I/O error: one line naming the file
            raise _io_error(path, e) from None
        raise


def atomic_torch_save(obj, path):
    """torch.save to `path` through a temporary file in the same folder and a rename, so that a
    crash or a full disk never leaves a half-written file under the final name."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def is_zip_archive(path):
    """Whether `path` is a zip archive: torch.save's format and numpy's .npz (EDM's snapshots are plain pickles)."""
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def _check_archive(path):
    """torch.save's zip archives carry a CRC32 of every record: a flipped bit or a partial copy fails it
    (torch.load itself does not look)."""
    if not is_zip_archive(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UnreadableFileError(f"{path}: cannot read this torch file (truncated or damaged: {e}); copy or "
                                  "fetch it again") from None
    if damaged is not None:
        raise UnreadableFileError(f"{path}: damaged: the checksum of its record {damaged} does not match (a "
                                  "flipped bit or a partial copy); copy or fetch the file again")


def read_torch_file(path):
    """torch.load(weights_only=True) to CPU after the archive's checksums are verified, or a
    UnreadableFileError saying why the file cannot be read."""
    _check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's advice (weights_only=False) would run the file's code: not given
        if "weights_only" not in str(e):
            raise UnreadableFileError(f"{path}: cannot read this torch file (truncated or corrupt): {e}") from None
        raise UnreadableFileError(f"{path} holds Python objects other than tensors and plain data (classes or "
                                  "functions, which could run code when loaded); pid_diffusion never loads such files. "
                                  "Save the tensors alone (e.g. torch.save(model.state_dict(), path))") from None
    except Exception as e:  # torch raises several types for truncated / foreign archives
        raise UnreadableFileError(f"{path}: cannot read this torch file (truncated, corrupt, or holding "
                                  f"objects other than tensors and plain data): {type(e).__name__}: {e}") from e


def write_json_atomic(path, data):
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


class LockHeld(RuntimeError):
    """FileLock.acquire(wait=False) found the lock taken; `holder` is what its file says of the holder."""

    def __init__(self, holder):
        super().__init__(holder)
        self.holder = holder


class FileLock:
    """An exclusive flock on `path`, held until release() or until the process ends (the kernel releases
    it however the process ends, so a lock file nobody holds is stale: it is taken over). The file names
    its holder (process, host, start time) for the message of whoever waits."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.handle = None
        self.previous_holder = None

    def acquire(self, wait=False, on_wait=None):
        """Take the lock; when held by another: wait (calling on_wait(holder) once) or raise LockHeld."""
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if not wait:
                handle.close()
                raise LockHeld(holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        self.previous_holder = handle.read().strip() or None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self):
        """Give the lock back (the file is emptied: an empty lock file names no crashed holder)."""
        if self.handle is not None:
            self.handle.truncate(0)
            self.handle.close()  # closing the file releases the flock
            self.handle = None


DIGEST_LENGTH = 16
"""Hexadecimal digits kept of a SHA-256 digest that identifies weights or statistics in a results file."""


def digest_of_arrays(arrays):
    """A short SHA-256 of numeric arrays (numpy or torch, in order; dtype and shape included)."""
    digest = hashlib.sha256()
    for array in arrays:
        if hasattr(array, "detach"):
            kind = str(array.dtype)
            array = array.detach().cpu().contiguous()
            array = (array.view(torch.int16) if array.dtype == torch.bfloat16 else array).numpy()  # numpy has no bf16
        else:
            kind = str(array.dtype)
        digest.update(f"{kind}{tuple(array.shape)}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:DIGEST_LENGTH]
