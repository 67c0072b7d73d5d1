"""A script's process: start the process group, run the script's body, end the group; one line and
an exit code for a user error or an orderly stop, never a traceback for those."""

import os
import signal
import sys
import traceback

from . import dist


class StoppedBySignal(Exception):
    """SIGTERM or SIGINT outside a training loop (which stops at a step's end instead): the script ends
    at once, with 128 + the signal as exit code; files are written through temporary names, so none is
    left half-written."""

    def __init__(self, signal_number):
        super().__init__(f"stopped by {signal.Signals(signal_number).name}: every file written so far is complete "
                         "(nothing is left half-written); the same command starts again")
        self.exit_code = 128 + signal_number


def _stop_at_once(signal_number, frame):
    raise StoppedBySignal(signal_number)


def run_script(body, extra_errors=()):
    """Start the process group, run body(dist_info), end the group.

    A user error (bad file, bad flag value, full disk, ...) prints one line and exits 1 without a
    traceback; an orderly stop (SIGTERM or SIGINT: StoppedBySignal, or one of `extra_errors` with an
    `exit_code`) prints its line once and exits with that code. With several processes every failure
    ends this process at once (os._exit, skipping MPI's finalisation, which would wait for the others):
    the launcher then stops the rest instead of leaving them blocked in a collective operation."""
    previous = {number: signal.signal(number, _stop_at_once) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run_body(body, extra_errors)
    except StoppedBySignal as e:  # while the process group was starting
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run_body(body, extra_errors):
    try:
        info = dist.init()
    except dist.LaunchError as e:  # the processes cannot form their group: each says why, once
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        body(info)
    except (ValueError, OSError, StoppedBySignal, *extra_errors) as e:
        if hasattr(e, "exit_code"):  # an orderly stop (trainer.TrainingInterrupted): its line, its code
            if info.rank == 0:
                print(str(e), file=sys.stderr, flush=True)
            _exit(e.exit_code, info)
        print(f"error (rank {info.rank}): {e}", file=sys.stderr, flush=True)
        _exit(1, info)
    except BaseException:
        if info.world_size == 1:
            raise
        traceback.print_exc()
        _exit(1, info)
    dist.shutdown()


def _exit(code, info):
    sys.stdout.flush()
    sys.stderr.flush()
    if info.world_size > 1:
        os._exit(code)
    sys.exit(code)
