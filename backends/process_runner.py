"""Supervisor for one process-backend job; run as
`python -I process_runner.py [--user UID:GID] STATE LOG -- argv...` with the job's environment as a
JSON object on stdin (nothing is started unless the whole object arrives).

It outlives the dashboard (own session), so a job keeps running across a dashboard restart and its
exit code is still recorded: the runner writes it into STATE when the child ends. The runner keeps
the dashboard's user (it owns STATE, so job code cannot forge an exit code), so it is stdlib only and
runs isolated with a bare environment: nothing the job's env holds (PYTHONPATH, LD_PRELOAD) reaches
it. With --user, the job child alone runs as UID:GID with no supplementary groups (needs root;
without root, UID:GID must be our own).
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
    params = sys.argv[1:]
    drop = {}
    if params[:1] == ["--user"]:
        uid, gid = (int(part) for part in params[1].split(":"))
        params = params[2:]
        if os.geteuid() == 0:
            drop = {"user": uid, "group": gid, "extra_groups": []}
        elif (uid, gid) != (os.geteuid(), os.getegid()):
            drop = {"user": uid}  # cannot switch without root: let Popen fail and record why
    state_path, log_path, sep, *argv = params
    assert sep == "--" and argv, "usage: process_runner.py [--user UID:GID] STATE LOG -- argv..."
    # The job's environment (credentials included) arrives on stdin, never in our own environment.
    try:
        env = json.loads(sys.stdin.buffer.read())
    except ValueError:
        env = None
    sys.stdin.close()
    if not isinstance(env, dict):
        # The launcher died before handing the whole environment over (a killed worker): start
        # nothing and record nothing, so its launch lock counts as abandoned and the job is
        # launched again, instead of running without its environment.
        return 2
    with open(log_path, "ab", buffering=0) as log:
        try:
            # Own process group, so terminate can kill the job and its children but not this runner.
            child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env, **drop)
        except (OSError, ValueError) as exc:
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
