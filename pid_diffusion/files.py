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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
