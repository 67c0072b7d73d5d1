"""Where weight files are looked for, how every output file is written (a temporary name in the
same folder, then a rename: a crash or a full disk never leaves a half-written file under the
final name, and the temporary file is removed when writing fails), and how torch files are read
(their checksums verified, nothing but tensors and plain data unpickled)."""

import contextlib
import json
import os
import tempfile
import zipfile

import torch


ZIP_MAGIC = b"PK\x03\x04"


class UnreadableFileError(ValueError):
    """A file that cannot be read as what it should hold; the message says which and why."""


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


def _umask():
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file follows the user's umask
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


def is_torch_archive(path):
    """Whether `path` is a zip archive, torch.save's format (EDM's snapshots are plain pickles)."""
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def _check_archive(path):
    """torch.save's zip archives carry a CRC32 of every record: a flipped bit or a partial copy fails it
    (torch.load itself does not look)."""
    if not is_torch_archive(path):
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
    except Exception as e:  # torch raises several types for truncated / foreign archives
        raise UnreadableFileError(f"{path}: cannot read this torch file (truncated, corrupt, or holding "
                                  f"objects other than tensors and plain data): {type(e).__name__}: {e}") from e


def write_json_atomic(path, data):
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
