"""The run logger: a text log and progress.csv (run_config.json is run_folder.py's).

Only rank 0 writes, into the run folder it is given (the scripts choose it: cli.default_log_dir).
"""

import csv
import os

from . import dist


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
