"""The results tables of the walk: fid_results_{seed}.csv (the original's model_name,FID first) and metrics_{seed}.csv
(one row per checkpoint and metric). Each row records the question it answers — samples, seed, sampling, weights,
detector, feed, reference — and answers only that question; rows are added under a file lock, so walks beside each
other keep every row."""

import csv
import dataclasses
import hashlib
import math
import os

from ..files import atomic_output, digest_of_arrays, FileLock
from ..run_folder import checkpoint_step
from .statistics import reference_digest, reference_name


RESULT_FIELDS = ("model_name", "FID", "step")
"""The original's columns first (model_name,FID), then ours."""


@dataclasses.dataclass(frozen=True)
class ResultsTable:
    """A results CSV of the walk: its file name (by seed), its value column and the columns it starts with."""
    file_name: str
    value: str
    leading: tuple


FID_TABLE = ResultsTable("fid_results_{seed}.csv", "FID", RESULT_FIELDS)
METRICS_TABLE = ResultsTable("metrics_{seed}.csv", "value", ("model_name", "step", "metric", "value", "std"))
"""The long table of the metrics beside FID: a row per (checkpoint, metric), then its question and parameters."""


QUESTION_FIELDS = ("num_samples", "seed", "sampling", "detector", "detector_sha256", "feed", "reference",
                   "reference_sha256", "weights_sha256")
"""What an FID of the results file measured, recorded beside it: a row answers only the same question."""


def results_file(folder, seed, table=FID_TABLE):
    """A results table of a folder for one seed: the FID table (the original's name; the walk's and FID during
    training's), or the metrics table."""
    return os.path.join(folder, table.file_name.format(seed=seed))


def measured_against(detector_name, detector, fid_dataset, ref_path, reference):
    """The items of an FID question that say what the samples are measured with: the detector and a digest of
    its weights, the reference statistics by name and by identity."""
    return dict(detector=getattr(detector, "question_name", detector_name),
                detector_sha256=digest_of_arrays(detector.state_dict().values()),
                reference=reference_name(fid_dataset, ref_path),
                reference_sha256=reference_digest(fid_dataset, ref_path, reference, detector))


def weights_digest(model):
    """Which weights an FID row measured: a digest of the sampled model's state (its file's name does not say)."""
    return digest_of_arrays(model.state_dict().values())


def sampling_description(options, request):
    """The sampling part of a question, as one text: the sampler, its options, the label and precision, and
    the first sample index where it is not 0 (the other ranges of a repeated evaluation)."""
    items = {**options, "class_label": -1 if request.class_label is None else request.class_label,
             "use_fp16": request.use_fp16}
    if request.first_index:
        items["first_sample"] = request.first_index
    return ";".join(f"{key}={items[key]}" for key in sorted(items))


def question_labels(rows):
    """What tells the questions of `rows` apart (one label per row: the question's items that differ between
    them, the sampling's one by one; '' when all rows answer one question), and the items they share."""
    def items(row):
        found = {k: row.get(k, "") for k in QUESTION_FIELDS if k not in ("sampling", "weights_sha256")}
        found.update(part.split("=", 1) for part in row.get("sampling", "").split(";") if "=" in part)
        return found
    described = [items(row) for row in rows]
    keys = sorted({k for d in described for k in d})
    differing = [k for k in keys if len({d.get(k, "") for d in described}) > 1]
    shared = {k: described[0].get(k, "") for k in keys if k not in differing} if described else {}
    return [", ".join(f"{k}={d.get(k, '')}" for k in differing) for d in described], shared


def samples_tag(request, sampling):
    """A name part for the files of one set of samples: the seed and a digest of how they were drawn."""
    return f"seed{request.seed}-{hashlib.sha256(sampling.encode()).hexdigest()[:8]}"


def answer(rows, name, question):
    """The row of `rows` that measured `question` for checkpoint `name`, or None."""
    for row in rows:
        if row["model_name"] == name and all(row.get(k) == str(v) for k, v in question.items()):
            return row
    return None


def read_results(path, table=FID_TABLE):
    """The rows of a results CSV (a list of dicts); a damaged row is reported with its line number."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"model_name", table.value} <= set(reader.fieldnames):
            raise ValueError(f"{path} line 1: not a results header (model_name,...,{table.value}); move the file away")
        for row in reader:
            try:
                if not row["model_name"] or None in row or None in row.values():  # more or fewer than the header's
                    raise ValueError("wrong number of fields")
                if not math.isfinite(float(row[table.value])):  # never recorded: a non-finite value is damage
                    raise ValueError(f"{table.value} {row[table.value]} is not a finite number")
                if row.get("step") in (None, ""):  # a CSV the original wrote has no step: the name has it
                    row["step"] = str(checkpoint_step(row["model_name"] + ".pt"))
                int(row["step"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path} line {reader.line_num}: damaged row {row} ({e}); delete that line and rerun "
                                 "(its checkpoint is evaluated again)") from None
            rows.append(row)
    return rows


def record_result(path, row, question, on_wait=None, table=FID_TABLE):
    """Add `row` (the answer to `question`) to the results CSV, one writer at a time: under the file's lock
    the CSV is read again, an older answer to the same question replaced, and the file rewritten whole.
    Rows of other questions, and those other walks added meanwhile, are kept. Returns every row."""
    lock = FileLock(path + ".lock").acquire(wait=True, on_wait=on_wait)
    try:
        rows = [r for r in read_results(path, table) if answer([r], row["model_name"], question) is None]
        rows.append({**row, **{k: str(v) for k, v in question.items()}})
        write_results(path, rows, table)
        return rows
    finally:
        lock.release()


def write_results(path, rows, table=FID_TABLE):
    """Rewrite the results CSV whole (through a temporary file): a cut-off row cannot exist. The
    columns are the table's leading ones, the question's, then any others the rows carry."""
    known = [*table.leading, *QUESTION_FIELDS]
    fields = known + sorted({k for row in rows for k in row} - set(known))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
