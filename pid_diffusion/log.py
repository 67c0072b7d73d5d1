"""The run logger: a text log and progress.csv (run_config.json is run_folder.py's).

Only rank 0 writes, into the run folder it is given (the scripts choose it: cli.default_log_dir).
"""

import csv
import os

from . import dist
from .files import atomic_output


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


PROGRESS_FILE = "progress.csv"


class RunLogger:
    def __init__(self, log_dir):
        self.log_dir = log_dir
        self._csv_keys = {}  # file name → its columns

    def log(self, message):
        if not dist.is_main():
            return
        print(message, flush=True)
        with open(os.path.join(self.log_dir, "log.txt"), "a") as f:
            f.write(message + "\n")

    def metrics(self, row, name=PROGRESS_FILE):
        """Append a row to the CSV file `name` of the run folder (its header, the first row's keys or the
        existing file's, is written once)."""
        if not dist.is_main():
            return
        path = os.path.join(self.log_dir, name)
        if name not in self._csv_keys:
            keys = list(row)
            if os.path.exists(path):
                with open(path, newline="") as f:
                    keys = next(csv.reader(f), None) or keys
            else:
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(keys)
            self._csv_keys[name] = keys
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._csv_keys[name]])

    def truncate_metrics(self, step, name=PROGRESS_FILE):
        """Cut the CSV file `name` back to the rows of steps ≤ `step` (a resumed run trains the later ones
        again); returns how many rows were removed. Rank 0 only."""
        path = os.path.join(self.log_dir, name)
        if not os.path.isfile(path):
            return 0
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "step" not in rows[0]:
            return 0
        column = rows[0].index("step")
        kept = [row for row in rows[1:] if _logged_step(row, column) <= step]
        if len(kept) == len(rows) - 1:
            return 0
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([rows[0], *kept])
        return len(rows) - 1 - len(kept)


def _logged_step(row, column):
    """The step of a progress.csv row (a row cut off by a crash counts as after every step)."""
    try:
        return int(float(row[column]))
    except (IndexError, ValueError):
        return float("inf")
