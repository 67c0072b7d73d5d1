"""The run logger: the terminal, a text log, progress.csv and TensorBoard event files (run_config.json is
run_folder.py's).

What it writes is the original logger's format list, `--log_format` or $OPENAI_LOG_FORMAT
("stdout,log,csv" by default; "tensorboard" adds event files holding every logged number and picture).
Only rank 0 writes, into the run folder it is given (the scripts choose it: cli.default_log_dir).
"""

import csv
import importlib.util
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
LOG_FORMATS = ("stdout", "log", "csv", "tensorboard")
DEFAULT_LOG_FORMAT = "stdout,log,csv"
TENSORBOARD_HINT = "pip install -e '.[tensorboard]'"


def log_formats(text=""):
    """The formats of a --log_format value (empty: $OPENAI_LOG_FORMAT, else stdout,log,csv), checked."""
    text = text or os.environ.get("OPENAI_LOG_FORMAT") or DEFAULT_LOG_FORMAT
    formats = tuple(name.strip() for name in text.split(",") if name.strip())
    if not formats:
        raise ValueError(f"--log_format / OPENAI_LOG_FORMAT {text!r} names no format: the run would log nothing; give "
                         f"some of {', '.join(LOG_FORMATS)}")
    unknown = [name for name in formats if name not in LOG_FORMATS]
    if unknown:
        raise ValueError(f"--log_format / OPENAI_LOG_FORMAT {text!r}: unknown format {unknown[0]!r}; valid: "
                         f"{', '.join(LOG_FORMATS)}")
    if "tensorboard" in formats and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"--log_format tensorboard needs the tensorboard package: {TENSORBOARD_HINT}")
    return formats


class RunLogger:
    def __init__(self, log_dir, formats=tuple(DEFAULT_LOG_FORMAT.split(","))):
        self.log_dir = log_dir
        self.formats = tuple(formats)
        self._csv_keys = {}  # file name → its columns
        self._events = None  # TensorBoard's writer, made at its first use (the folder exists by then)

    def log(self, message):
        if not dist.is_main():
            return
        if "stdout" in self.formats:
            print(message, flush=True)
        if "log" in self.formats:
            with open(os.path.join(self.log_dir, "log.txt"), "a") as f:
                f.write(message + "\n")

    def _event_writer(self):
        if self._events is None:
            from torch.utils.tensorboard import SummaryWriter

            self._events = SummaryWriter(self.log_dir)
        return self._events

    def scalars(self, values, step):
        """Every number of `values` (others, and empty cells, are passed over) as a TensorBoard scalar at `step`."""
        if not dist.is_main() or "tensorboard" not in self.formats:
            return
        writer = self._event_writer()
        for tag, value in values.items():
            try:
                writer.add_scalar(tag, float(value), step)
            except (TypeError, ValueError):
                continue
        writer.flush()

    def image(self, tag, image_uint8_hwc, step):
        """A uint8 HWC picture (greyscale or colour) in TensorBoard at `step`."""
        if not dist.is_main() or "tensorboard" not in self.formats:
            return
        self._event_writer().add_image(tag, image_uint8_hwc, step, dataformats="HWC")
        self._events.flush()

    def close(self):
        if self._events is not None:
            self._events.close()
            self._events = None

    def metrics(self, row, name=PROGRESS_FILE):
        """Append a row to the CSV file `name` of the run folder (its header, the first row's keys or the
        existing file's, is written once)."""
        if not dist.is_main():
            return
        if name == PROGRESS_FILE:
            self.scalars({k: v for k, v in row.items() if k != "step"}, row["step"])
            if "csv" not in self.formats:
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
