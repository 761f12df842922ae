"""The one way every pipeline ends: `run` calls the stage, prints its summary, or its error as one line, and returns
the exit status (README, "Exit status"):

    0    done
    1    an input or a run that failed (`error: ...`, naming the file)
    2    a bad command line or config (`config error: ...`, naming the key or flag)
    130  interrupted (Ctrl-C; SIGTERM too where the stage asks for it): what is finished is kept
    143  stopped by SIGTERM / SIGUSR1 after saving (train: a scheduler's preemption)

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return run(lambda: stage(args), interrupted="finished shards are kept; run the same command again")
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from .errors import T2VError

INTERRUPTED = 130


def run(stage: Callable[[], str | None], *, interrupted: str | Callable[[], str] = "",
        sigterm_interrupts: bool = False) -> int:
    """Run `stage()` and print what it returns. `interrupted`: what the Ctrl-C line adds after "interrupted: " (a
    callable is asked only then). `sigterm_interrupts`: SIGTERM stops the stage like Ctrl-C (a scheduler's stop)."""
    previous = None
    if sigterm_interrupts and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = stage()
    except KeyboardInterrupt:
        detail = interrupted() if callable(interrupted) else interrupted
        print(f"interrupted: {detail}" if detail else "interrupted", file=sys.stderr)
        return INTERRUPTED
    except T2VError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk, a permission changed mid-run: finished outputs stay
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if summary:
        print(summary)
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
