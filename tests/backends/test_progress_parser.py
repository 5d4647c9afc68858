"""backends.progress: federated training progress from real NVFlare 2.9 output (tests/fixtures/
nvflare_logs/: a POC hello-numpy-sag server job and site-1 client job, a NumpyFedAvgRecipe server job
in the simulator, their deployed server configs), and what hostile output cannot do."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from backends.progress import (
    CONFIG_MAX_BYTES,
    MAX_ROUND,
    Progress,
    config_num_rounds,
    progress_fold,
    progress_from_public,
)

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "nvflare_logs"
STAMP = "2026-12-06 20:10:43,572"
CTX = "[identity=example_project, run=aaae42a1, wf=scatter_and_gather]"


def lines(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


def record(message: str, logger: str = "ScatterAndGather") -> str:
    return f"{STAMP} - {logger} - INFO - {CTX} - {message}"


def history(name: str, role: str) -> list[dict]:
    """Each distinct public state as the lines arrive one by one."""
    state, seen = Progress(), []
    for line in lines(name):
        state = progress_fold(state, [line], role=role)
        if not seen or seen[-1] != state.public():
            seen.append(state.public())
    return seen


def test_scatter_and_gather_server_job_of_a_real_poc():
    seen = history("poc_sag_server.log", "server")
    assert [(s["round"], s["aggregation_round"], s["aggregated_updates"]) for s in seen] == [
        (None, None, None), (0, None, None), (0, 0, 2), (1, 0, 2), (1, 1, 2), (2, 1, 2), (2, 2, 2), (2, 2, 2)]
    assert seen[-1] == {"round": 2, "total_rounds": None, "aggregation_round": 2, "aggregated_updates": 2,
                        "finished": True}  # SAG never prints its number of rounds
    assert not seen[-2]["finished"]


def test_fedavg_recipe_server_job_banners_and_in_time_aggregation():
    """FedAvg prints "Round N started." as a banner under an empty record, and one
    "Aggregated k/n results" per client result."""
    seen = history("sim_fedavg_server.log", "server")
    assert [(s["round"], s["aggregation_round"], s["aggregated_updates"]) for s in seen[1:]] == [
        (0, None, None), (0, 0, 1), (0, 0, 2), (1, 0, 2), (1, 1, 1), (1, 1, 2), (2, 1, 2), (2, 2, 1), (2, 2, 2),
        (2, 2, 2)]
    assert seen[-1]["finished"] is True


def test_client_job_shows_the_round_it_trains_and_the_total_it_was_told():
    final = progress_fold(Progress(), lines("poc_sag_client_site1.log"), role="client")
    assert final.public() == {"round": 2, "total_rounds": 3, "aggregation_round": None,
                              "aggregated_updates": None, "finished": False}


@pytest.mark.parametrize("name, role", [("poc_sag_server.log", "client"), ("sim_fedavg_server.log", "client"),
                                        ("poc_sag_client_site1.log", "server"), ("poc_sag_server.log", "other")])
def test_output_of_the_other_role_gives_nothing(name, role):
    """A client job printing the server's lines (its code is the submitter's) is not the server."""
    assert progress_fold(Progress(), lines(name), role=role).empty


@pytest.mark.parametrize("name, role", [("poc_sag_server.log", "server"), ("sim_fedavg_server.log", "server"),
                                        ("poc_sag_client_site1.log", "client")])
def test_folding_is_idempotent_and_batch_boundaries_do_not_matter(name, role):
    text = lines(name)
    once = progress_fold(Progress(), text, role=role)
    assert progress_fold(once, text, role=role).public() == once.public()  # a tail read again
    for cut in range(0, len(text), 7):  # a follower's reads split the output anywhere
        split = progress_fold(progress_fold(Progress(), text[:cut], role=role), text[cut:], role=role)
        assert split.public() == once.public(), cut


def test_ansi_colours_and_crlf_are_ignored():
    line = "\x1b[32m" + record("Round 4 started.") + "\x1b[0m\r"
    assert progress_fold(Progress(), [line], role="server").round == 4


@pytest.mark.parametrize("line", [
    "Round 99 started.",  # a bare print, not a log record
    "print: " + record("Round 99 started."),  # a record quoted inside another line
    record("Round 99 started. (not really)"),
    record("Round -1 started."),
    record("Round 1e9 started."),
    record("Round ٩٩ started."),  # Arabic-Indic digits: int() would take them
    record(f"Round {MAX_ROUND + 1} started."),
    record("Round 99999999999999999999999999 started."),
    record("Round 99 started." + " " * 5000),  # longer than any NVFlare line
    record("aggregating 100001 update(s) at round 1", "DXOAggregator"),
    record("Aggregated 3/2 results", "FedAvg"),
    record("Aggregated 0/2 results", "FedAvg"),
    record("Stopping at round=1 out of total_rounds=0.", "FedAvg"),
    "\x00" * 100, "", "   ", "-" * 80,
])
def test_hostile_or_malformed_lines_give_nothing(line):
    assert progress_fold(Progress(), [line], role="server").empty
    assert progress_fold(Progress(), [line], role="client").empty


def test_non_strings_are_skipped_not_raised_on():
    state = progress_fold(Progress(), [None, 3, b"Round 1 started.", record("Round 1 started.")], role="server")
    assert state.round == 1


def test_a_banner_counts_only_right_after_an_empty_record():
    header = f"{STAMP} - FedAvg - INFO - {CTX} - "
    assert progress_fold(Progress(), [header, "-" * 40, "   Round 7 started.   "], role="server").round == 7
    late = [header, "-" * 40, "x", "y", "   Round 7 started.   "]
    assert progress_fold(Progress(), late, role="server").round is None
    interrupted = [header, record("something else"), "   Round 7 started.   "]
    assert progress_fold(Progress(), interrupted, role="server").round is None
    # Only round and end lines come as banners, never an aggregation.
    assert progress_fold(Progress(), [header, "Aggregated 2/2 results"], role="server").empty


def test_a_total_the_round_already_passed_is_not_shown():
    state = Progress(round=5, total_rounds=3)
    assert state.public()["total_rounds"] is None
    stopped = progress_fold(Progress(), [record("Round 1 started."),
                                         record("Stopping at round=1 out of total_rounds=5.", "FedAvg")], role="server")
    assert (stopped.round, stopped.public()["total_rounds"]) == (1, 5)


def test_end_of_an_uncounted_aggregation_still_counts():
    state = progress_fold(Progress(), [record("Round 2 started."), record("Start aggregation."),
                                       record("End aggregation.")], role="server")
    assert (state.aggregation_round, state.aggregated_updates) == (2, None)
    counted = progress_fold(state, [record("Round 3 started."),
                                    record("aggregating 4 update(s) at round 3", "DXOAggregator"),
                                    record("End aggregation.")], role="server")
    assert (counted.aggregation_round, counted.aggregated_updates) == (3, 4)


@pytest.mark.parametrize("stored", [None, [], "x", {"round": "1"}, {"round": True}, {"round": -1},
                                    {"round": MAX_ROUND + 1}, {"total_rounds": 1.5}, {"finished": "yes"}])
def test_a_damaged_stored_value_reads_as_nothing(stored):
    assert progress_from_public(stored).empty


def test_stored_values_read_back():
    state = Progress(round=2, total_rounds=5, aggregation_round=1, aggregated_updates=2, finished=True)
    assert progress_from_public(state.public() | {"updated_at": "x"}) == state


# ---------------------------------------------------------------------------------------------
# The total from the deployed server config
# ---------------------------------------------------------------------------------------------


def deploy(workspace: Path, job_id: str, name: str, content: str | bytes) -> Path:
    config = workspace / job_id / "app_server" / "config"
    config.mkdir(parents=True)
    path = config / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_total_from_the_real_deployed_configs(tmp_path):
    deploy(tmp_path, "j-json", "config_fed_server.json", (LOGS / "fedavg_config_fed_server.json").read_text())
    deploy(tmp_path, "j-conf", "config_fed_server.conf", (LOGS / "sag_np_config_fed_server.conf").read_text())
    assert config_num_rounds(str(tmp_path), "j-json") == 3
    assert config_num_rounds(str(tmp_path), "j-conf") == 5
    assert config_num_rounds(str(tmp_path), "missing") is None


def test_config_symlinks_are_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config_fed_server.json").write_text(json.dumps({"workflows": [{"args": {"num_rounds": 7}}]}))
    ws = tmp_path / "ws"
    config = ws / "j1" / "app_server" / "config"
    config.mkdir(parents=True)
    (config / "config_fed_server.json").symlink_to(outside / "config_fed_server.json")
    assert config_num_rounds(str(ws), "j1") is None
    (ws / "j2").mkdir()
    (ws / "j2" / "app_server").symlink_to(outside.parent / "elsewhere", target_is_directory=True)
    (outside.parent / "elsewhere" / "config").mkdir(parents=True)
    (outside.parent / "elsewhere" / "config" / "config_fed_server.json").write_text(
        json.dumps({"workflows": [{"args": {"num_rounds": 7}}]}))
    assert config_num_rounds(str(ws), "j2") is None
    (ws / "j3").symlink_to(outside.parent / "elsewhere")
    assert config_num_rounds(str(ws), "j3") is None
    for job_id in ("..", ".", "a/b", "", "x\0y"):
        assert config_num_rounds(str(ws), job_id) is None


def test_a_fifo_or_huge_config_is_not_read(tmp_path):
    config = tmp_path / "j1" / "app_server" / "config"
    config.mkdir(parents=True)
    os.mkfifo(config / "config_fed_server.json")  # opening it blocking would hang the follower
    assert config_num_rounds(str(tmp_path), "j1") is None
    big = {"workflows": [{"args": {"num_rounds": 4}}], "pad": "x" * CONFIG_MAX_BYTES}
    deploy(tmp_path, "j2", "config_fed_server.json", json.dumps(big))
    assert config_num_rounds(str(tmp_path), "j2") is None


@pytest.mark.parametrize("content", [
    "{", "[]", '{"workflows": {}}', '{"workflows": [1, "x", {"args": []}]}',
    '{"workflows": [{"args": {"num_rounds": true}}]}', '{"workflows": [{"args": {"num_rounds": "5"}}]}',
    '{"workflows": [{"args": {"num_rounds": 0}}]}', '{"workflows": [{"args": {"num_rounds": -3}}]}',
    '{"workflows": [{"args": {"num_rounds": 1e400}}]}', '{"workflows": [{"args": {"num_rounds": 10000000000}}]}',
    "[" * 100000, b"\xff\xfe\x00garbage",
])
def test_a_config_saying_nothing_usable_gives_no_total(tmp_path, content):
    deploy(tmp_path, "j1", "config_fed_server.json", content)
    assert config_num_rounds(str(tmp_path), "j1") is None


def test_the_first_workflow_with_a_total_wins(tmp_path):
    config = {"workflows": [{"id": "init", "args": {}}, {"args": {"num_rounds": 4}}, {"args": {"num_rounds": 9}}]}
    deploy(tmp_path, "j1", "config_fed_server.json", json.dumps(config))
    assert config_num_rounds(str(tmp_path), "j1") == 4


def test_progress_is_a_plain_value():
    assert dataclasses.asdict(Progress())["round"] is None
