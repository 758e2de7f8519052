"""orchestration.signals: a driver stopped by SIGTERM (`kill`, `ray job stop`) takes Ctrl-C's path, so the one
end-to-end stop test of orchestration.train (SIGTERM) covers Ctrl-C too."""

import subprocess
import sys

CHILD = """
import os, signal, time
from orchestration.signals import interrupt_on_sigterm
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
