"""Where weight files are looked for, and how every output file is written (a temporary name in the
same folder, then a rename: a crash or a full disk never leaves a half-written file under the
final name, and the temporary file is removed when writing fails)."""

import contextlib
import os
import tempfile

import torch


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
