"""The start of every script: Ctrl-C while it still imports torch and the package (seconds on a cold disk)
ends it with one line and exit code 130, not a traceback from deep inside an import. Imports nothing heavy."""

import contextlib
import signal
import sys

INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


@contextlib.contextmanager
def quiet_interrupt_while_importing():
    """Within: SIGINT prints one line and exits 130 (nothing has been written yet); after: Python's own handler."""

    def stop(signal_number, frame):
        print("stopped by SIGINT while starting (importing torch): nothing was written", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT_CODE)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
