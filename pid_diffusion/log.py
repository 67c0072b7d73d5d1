"""The run logger: a text log, progress.csv, the resolved configuration and the git revision.

Only rank 0 writes, into the run folder it is given (the scripts choose it: cli.default_log_dir).
"""

import csv
import json
import os
import subprocess
import sys

from . import dist
from .files import atomic_output


def git_revision():
    """The commit of the package's source tree (with '+dirty' for uncommitted changes), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def prepare_log_dir(path):
    """Create the run folder and prove it is writable, with a message that says what to change."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"cannot write the run folder {path!r} ({e.strerror}); set OPENAI_LOGDIR "
                              "to a writable folder") from e
    return path


def write_json_atomic(path, data):
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


class RunLogger:
    def __init__(self, log_dir):
        self.log_dir = log_dir
        self._csv_keys = None

    def log(self, message):
        if not dist.is_main():
            return
        print(message, flush=True)
        with open(os.path.join(self.log_dir, "log.txt"), "a") as f:
            f.write(message + "\n")

    def metrics(self, row):
        """Append a row to progress.csv (the header is written once per file)."""
        if not dist.is_main():
            return
        path = os.path.join(self.log_dir, "progress.csv")
        if self._csv_keys is None:
            self._csv_keys = list(row)
            if os.path.exists(path):
                with open(path, newline="") as f:
                    header = next(csv.reader(f), None)
                self._csv_keys = header or self._csv_keys
            else:
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(self._csv_keys)
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._csv_keys])

    def save_config(self, config):
        if dist.is_main():
            config = {**config, "git_revision": git_revision(), "command": " ".join(sys.argv)}
            write_json_atomic(os.path.join(self.log_dir, "run_config.json"), config)
