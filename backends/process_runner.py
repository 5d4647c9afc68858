"""Supervisor for one process-backend job; run as `python process_runner.py STATE LOG -- argv...`.

It outlives the dashboard (own session), so a job keeps running across a dashboard restart and its
exit code is still recorded: the runner writes it into STATE when the child ends. Stdlib only,
because it runs with the job's environment, not the dashboard's.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time


def write_state(path: str, **changes) -> None:
    """Merge `changes` into the JSON state file atomically (also used by backends.process)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    state.update(changes)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)  # readers see the old or the new state, never half of it


def main() -> int:
    state_path, log_path, sep, *argv = sys.argv[1:]
    assert sep == "--" and argv, "usage: process_runner.py STATE LOG -- argv..."
    with open(log_path, "ab", buffering=0) as log:
        try:
            # Own process group, so terminate can kill the job and its children but not this runner.
            child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        except OSError as exc:
            log.write(f"cannot start {argv[0]}: {exc}\n".encode())
            write_state(state_path, exit_code=127, finished_at=time.time(), reason="ExecFailed", message=str(exc))
            return 127

        def forward(signum, _frame):
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        write_state(state_path, pid=child.pid, runner_pid=os.getpid(), started_at=time.time())
        code = child.wait()
    # A child killed by signal N reports -N; record it the way a shell would (128 + N).
    exit_code = code if code >= 0 else 128 - code
    write_state(state_path, exit_code=exit_code, finished_at=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
