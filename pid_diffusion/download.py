"""Files named by URL, as EDM's scripts accept them: `--teacher_model_path`, the FID detector, the
reference statistics and the LPIPS weights may be http:// or https:// addresses.

A URL's file is downloaded once into torch hub's cache folder (`<hub>/checkpoints/<file name>`, where
the weight search looks too) with a progress bar, written under a temporary name and renamed only when
complete, checked against its SHA-256 where one is known (given, or announced by the file name as torch
hub's convention has it: `vgg16-397923af.pth` starts with 397923af), and reused afterwards. Under
several processes rank 0 downloads while the others wait for it.
"""

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import torch

from . import dist
from .files import atomic_output

URL_PREFIXES = ("http://", "https://")
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
"""torch hub's convention: a file name that carries the start of its SHA-256 (vgg16-397923af.pth)."""
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


class DownloadError(OSError):
    """A URL's file could not be fetched or did not check out; nothing was kept under its name."""


def is_url(path):
    return isinstance(path, str) and path.startswith(URL_PREFIXES)


def cache_path(url):
    """Where a URL's file is kept: torch hub's checkpoints folder, under the URL's file name."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise DownloadError(f"{url}: the address names no file (it should end in a file name)")
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def local_file(path_or_url, what, sha256=None):
    """A local path for `path_or_url`: the path itself, or the URL's file in the cache (downloaded by
    rank 0 if it is not there yet). `what` names the file in messages, e.g. "the teacher"."""
    if not is_url(path_or_url):
        return path_or_url
    target = cache_path(path_or_url)
    if not dist.is_distributed():
        _fetch(path_or_url, target, what, sha256)
        return target
    failure = None
    if dist.is_main():
        try:
            _fetch(path_or_url, target, what, sha256)
        except DownloadError as e:
            failure = str(e)
    failure = dist.broadcast_object(failure)  # the others wait here for rank 0's download
    if failure:
        raise DownloadError(failure)
    return target


def expected_sha256(url, sha256=None):
    """The known SHA-256 (or its start) of a URL's file: the one given, else the file name's."""
    if sha256:
        return sha256.lower()
    match = HASH_IN_NAME.search(os.path.basename(urllib.parse.urlparse(url).path))
    return match.group(1) if match else None


def _fetch(url, target, what, sha256):
    expected = expected_sha256(url, sha256)
    if os.path.isfile(target):
        if expected and not _sha256_of(target).startswith(expected):
            raise DownloadError(f"{what}: the cached {target} (from {url}) does not match its SHA-256 {expected}; "
                                "delete it and run again")
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        with atomic_output(target) as tmp:
            digest = _download(url, tmp, what)
            if expected and not digest.startswith(expected):
                raise DownloadError(f"{what}: the file at {url} has SHA-256 {digest[:16]}…, not the expected "
                                    f"{expected}; nothing was kept (is the address right?)")
    except DownloadError:
        raise
    except OSError as e:  # the cache folder cannot be written
        raise DownloadError(f"{what}: cannot keep the download of {url}: {e}") from None


def _download(url, path, what):
    """Stream `url` into `path` with a progress bar; returns the SHA-256 hex digest."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    failure, total, received = None, 0, 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(url)}",
                      disable=not sys.stderr.isatty()) as bar:
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        failure = f"cannot download {url}: HTTP {e.code} {e.reason}"
    except http.client.IncompleteRead as e:
        received += len(e.partial)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        failure = f"cannot download {url}: {getattr(e, 'reason', None) or e}"
    # raised outside the handlers: the message is the whole story (no chained socket error)
    if failure is None and total and received != total:
        failure = f"the download of {url} broke off after {received} of {total} bytes; nothing was kept, run again"
    if failure:
        raise DownloadError(f"{what}: {failure}")
    return digest.hexdigest()


def _sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
