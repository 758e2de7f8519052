"""orchestration.signals and mupvit.stop_signals: a driver stopped by SIGTERM (`kill`, `ray job stop`) takes
Ctrl-C's path, so one signal per end-to-end stop test covers both: SIGTERM for orchestration.train
(tests/test_orchestration.py) and mupvit.train (tests/test_train.py), Ctrl-C for orchestration.sweep
(tests/test_sweep.py)."""

import subprocess
import sys

# Ctrl-C's handler as a terminal's foreground process has it: a shell starts background jobs (CI's, too) with SIGINT
# ignored, and Python then leaves it ignored.
CHILD = """
import os, signal, time
from orchestration.signals import interrupt_on_sigterm
signal.signal(signal.SIGINT, signal.default_int_handler)
interrupt_on_sigterm()
try:
    os.kill(os.getpid(), signal.{sig})
    time.sleep(5)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


def test_sigterm_raises_the_keyboard_interrupt_of_ctrl_c():
    for sig in ("SIGINT", "SIGTERM"):
        done = subprocess.run([sys.executable, "-c", CHILD.format(sig=sig)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "KeyboardInterrupt", (sig, done.stderr[-2000:])


def test_without_it_sigterm_ends_the_process_with_no_cleanup():  # the test above fails if the handler is not set
    done = subprocess.run([sys.executable, "-c", CHILD.replace("interrupt_on_sigterm()\n", "").format(sig="SIGTERM")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -15 and "KeyboardInterrupt" not in done.stdout


GRACEFUL = """
import os, signal
from mupvit.stop_signals import stop_gracefully
asked = []
with stop_gracefully(lambda: asked.append(1) or True) as received:
    os.kill(os.getpid(), signal.{sig})  # the first: asks for the stop, recorded
    try:
        os.kill(os.getpid(), signal.{sig})  # a second one interrupts
    except KeyboardInterrupt:
        print(len(asked), received == [signal.{sig}] * 2, "KeyboardInterrupt")
"""


def test_a_graceful_stop_is_the_same_for_ctrl_c_and_sigterm():
    """orchestration.sweep's and mupvit.train's stop (the sweep test stops one with Ctrl-C, tests/test_train.py the
    trainer with SIGTERM): the first SIGINT or SIGTERM asks for the stop and is recorded; a second one raises
    KeyboardInterrupt."""
    for sig in ("SIGINT", "SIGTERM"):
        done = subprocess.run([sys.executable, "-c", GRACEFUL.format(sig=sig)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and done.stdout.split() == ["1", "True", "KeyboardInterrupt"], \
            (sig, done.stdout, done.stderr[-2000:])
