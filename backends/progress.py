"""Federated training progress read from an NVFlare job's own output. Pure functions, no Django.

What NVFlare 2.9 prints (tests/fixtures/nvflare_logs/, from a real POC and simulator runs), each a
log record `<date> <time> - <logger> - <LEVEL> - [<fl_ctx>] - <message>`:

- ScatterAndGather (server job): "Round 3 started.", then "aggregating 2 update(s) at round 3"
  (the DXO aggregators; also BaseFedAvg) between "Start aggregation." and "End aggregation.", and
  "Finished ScatterAndGather Training." It never prints the number of rounds.
- FedAvg / the recipes' controller (server job): the record's message is empty and the text follows
  as a banner on the next lines ("-----", "   Round 3 started.   ", "-----"); each client result
  gives "Aggregated 2/2 results"; the end is a "Finished FedAvg." banner; an early stop prints
  "Stopping at round=3 out of total_rounds=5."
- NPTrainer (client job): "Model received for round 3/5: ...".

Job output is untrusted: only whole log records count (a bare `print("Round 9 started.")` does not,
except as the line of a banner right after an empty record), a client job's output never gives
server progress, numbers are capped, and malformed input is skipped, never raised on. The total may
also come from the job's deployed server config (`config_num_rounds`), read without following
symlinks and within a byte cap.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import stat
from collections.abc import Iterable

MAX_ROUND = 1_000_000  # larger round numbers or totals are not believed
MAX_UPDATES = 100_000  # nor larger counts of client updates in one aggregation
MAX_LINE = 4096  # longer lines are not progress lines (NVFlare's are a few hundred characters)
BANNER_LINES = 3  # the lines after an empty record that may carry its banner text
CONFIG_MAX_BYTES = 256 * 1024
CONFIG_NAMES = ("config_fed_server.json", "config_fed_server.conf")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RECORD = re.compile(
    r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d{1,6})? - (?:[A-Za-z_][\w.]{0,200} - )?"
    r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) - (?:\[[^\]]{0,2000}\] - ?)?(?P<msg>.*)$", re.ASCII)
_NUM = r"([0-9]{1,9})"  # ASCII digits only: \d would take any script's digits
_ROUND_STARTED = re.compile(rf"Round {_NUM} started\.")
_AGGREGATING = re.compile(rf"aggregating {_NUM} update\(s\) at round {_NUM}")
_AGGREGATED = re.compile(rf"Aggregated {_NUM}/{_NUM} results")
_END_AGGREGATION = re.compile(r"End aggregation\.")
_STOPPING = re.compile(rf"Stopping at round={_NUM} out of total_rounds={_NUM}\.")
_FINISHED = re.compile(r"Finished (?:ScatterAndGather Training|FedAvg)\.")
_CLIENT_ROUND = re.compile(rf"(?:Model received|Completed mock training) for round {_NUM}/{_NUM}:.*")
_CONF_NUM_ROUNDS = re.compile(r"^[ \t]*num_rounds[ \t]*[=:][ \t]*([0-9]{1,9})[ \t]*,?[ \t]*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Progress:
    """What the output said so far: each field is what its latest line said, so folding the same
    lines again changes nothing. `aggregation_round` and `aggregated_updates` describe the last
    aggregation (updates: None when the output did not count them); a caller tells a new
    aggregation from the same one read again by that pair."""

    round: int | None = None
    total_rounds: int | None = None
    aggregation_round: int | None = None
    aggregated_updates: int | None = None
    finished: bool = False
    banner: int = 0  # lines left in which a banner's text may follow an empty record (not kept)

    def public(self) -> dict:
        """The fields a reader gets; a total that the current round already passed (a restarted or
        hostile job) is not shown."""
        total = self.total_rounds
        if total is not None and self.round is not None and self.round >= total:
            total = None
        return {"round": self.round, "total_rounds": total, "aggregation_round": self.aggregation_round,
                "aggregated_updates": self.aggregated_updates, "finished": self.finished}

    @property
    def empty(self) -> bool:
        return self.round is None and self.aggregation_round is None and not self.finished and self.total_rounds is None


def progress_fold(state: Progress, lines: Iterable[str], *, role: str) -> Progress:
    """`state` advanced by a job's next output `lines`. `role`: "server" or "client" (a client job
    gives only the round it trains and the total it was told)."""
    for raw in lines:
        if not isinstance(raw, str) or len(raw) > MAX_LINE:
            state = dataclasses.replace(state, banner=0) if state.banner else state
            continue
        line = _ANSI.sub("", raw).rstrip("\r\n")
        record = _RECORD.match(line)
        if record is None:
            if state.banner and role == "server":
                state = _server_message(state, line.strip(), banner=True)
                state = dataclasses.replace(state, banner=max(0, state.banner - 1))
            continue
        message = record.group("msg").strip()
        banner = 0 if message else BANNER_LINES
        if state.banner != banner:
            state = dataclasses.replace(state, banner=banner)
        if role == "server":
            state = _server_message(state, message, banner=False)
        elif role == "client":
            state = _client_message(state, message)
    return state


def _server_message(state: Progress, message: str, *, banner: bool) -> Progress:
    if m := _ROUND_STARTED.fullmatch(message):
        return _with_round(state, m.group(1))
    if m := _FINISHED.fullmatch(message):
        return dataclasses.replace(state, finished=True, banner=0)
    if banner:  # a banner carries only the two lines above
        return state
    if m := _AGGREGATING.fullmatch(message):
        updates, at = _capped(m.group(1), MAX_UPDATES), _capped(m.group(2), MAX_ROUND)
        if updates is None or at is None:
            return state
        return dataclasses.replace(state, aggregation_round=at, aggregated_updates=updates)
    if m := _AGGREGATED.fullmatch(message):
        done, expected = _capped(m.group(1), MAX_UPDATES), _capped(m.group(2), MAX_UPDATES)
        if done is None or expected is None or done > expected or done == 0:
            return state
        return dataclasses.replace(state, aggregation_round=state.round, aggregated_updates=done)
    if _END_AGGREGATION.fullmatch(message):
        if state.round is None or state.aggregation_round == state.round:
            return state  # the counted aggregation of this round, ending (or a round we never saw)
        return dataclasses.replace(state, aggregation_round=state.round, aggregated_updates=None)
    if m := _STOPPING.fullmatch(message):
        total = _capped(m.group(2), MAX_ROUND)
        return dataclasses.replace(state, total_rounds=total) if total else state
    return state


def _client_message(state: Progress, message: str) -> Progress:
    if m := _CLIENT_ROUND.fullmatch(message):
        state = _with_round(state, m.group(1))
        total = _capped(m.group(2), MAX_ROUND)
        if total:
            state = dataclasses.replace(state, total_rounds=total)
    return state


def _with_round(state: Progress, text: str) -> Progress:
    value = _capped(text, MAX_ROUND)
    return state if value is None else dataclasses.replace(state, round=value, banner=0)


def _capped(text: str, limit: int) -> int | None:
    value = int(text)
    return value if value <= limit else None


def progress_from_public(data) -> Progress:
    """A Progress from a stored dict (as `Progress.public` made it);
    anything of the wrong type or out of range is dropped, so a damaged row cannot break parsing."""
    if not isinstance(data, dict):
        return Progress()

    def number(key: str, limit: int) -> int | None:
        value = data.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit else None

    return Progress(round=number("round", MAX_ROUND), total_rounds=number("total_rounds", MAX_ROUND),
                    aggregation_round=number("aggregation_round", MAX_ROUND),
                    aggregated_updates=number("aggregated_updates", MAX_UPDATES),
                    finished=data.get("finished") is True)


# ---------------------------------------------------------------------------------------------
# The total from the deployed server config
# ---------------------------------------------------------------------------------------------


def config_num_rounds(workspace: str, job_id: str) -> int | None:
    """`num_rounds` of the first workflow that has one in `<workspace>/<job_id>/app_server/config/
    config_fed_server.json` (or `.conf`), where NVFlare deploys a server job's app. None when the
    file is missing, a symlink, not a regular file, over CONFIG_MAX_BYTES or says nothing usable.
    `workspace` is the staff-configured site workspace (the one path whose symlinks are followed);
    every entry below it is opened without following symlinks, so a job cannot point it elsewhere."""
    if not workspace or not os.path.isabs(workspace) or not isinstance(job_id, str) or not job_id:
        return None
    if job_id in (".", "..") or "/" in job_id or "\0" in job_id:
        return None
    for name in CONFIG_NAMES:
        text = _read_below(workspace, (job_id, "app_server", "config"), name)
        if text is None:
            continue
        found = _json_num_rounds(text) if name.endswith(".json") else _conf_num_rounds(text)
        if found is not None:
            return found
    return None


def _read_below(root: str, dirs: tuple[str, ...], name: str) -> str | None:
    fds: list[int] = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in dirs:
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1]))
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fds[-1])
        fds.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > CONFIG_MAX_BYTES:
            return None
        data = os.read(fd, CONFIG_MAX_BYTES + 1)
        if len(data) > CONFIG_MAX_BYTES:
            return None
        return data.decode("utf-8", "replace")
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENXIO):
            raise
        return None
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _json_num_rounds(text: str) -> int | None:
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        return None
    workflows = config.get("workflows") if isinstance(config, dict) else None
    if not isinstance(workflows, list):
        return None
    for workflow in workflows:
        args = workflow.get("args") if isinstance(workflow, dict) else None
        value = args.get("num_rounds") if isinstance(args, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ROUND:
            return value
    return None


def _conf_num_rounds(text: str) -> int | None:
    # HOCON: a line `num_rounds = 5`; the first one is the first workflow's, as NVFlare lays them out.
    match = _CONF_NUM_ROUNDS.search(text)
    if match is None:
        return None
    value = int(match.group(1))
    return value if 0 < value <= MAX_ROUND else None
