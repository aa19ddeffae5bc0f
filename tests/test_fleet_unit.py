"""The fleet summary without Docker: each workshop's line from its run record, and the callback that
prints and writes the summary, driven by a real ansible-playbook run over local connections (a host
that fails in a loop, one whose failure a rescue catches, one unreachable, one that goes through)."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible.module_utils.workshop_fleet import fleet_entry
from ansible.utils.vars import load_extra_vars

from conftest import REPO, load_module, run_playbook, wait_for

RECORD = {
    "drain": {"drained": True, "final_time": "2026-11-29T17:02:11+00:00", "total_jobs": 42, "counts_at_end": {"failed": 3}},
    "backup": {"name": "backup-2", "verify": {"ok": True, "backup": "backup-2", "failures": []}},
    "archive": {
        "targets": {
            "r2": {"backup": "backup-2", "verified": True},
            "nas": {"backup": "backup-2", "verified": False},
            "old": {"backup": "backup-1", "verified": True},
        }
    },
    "share": {"delivery": "s3", "period_ends": "2026-12-06T17:00:00+00:00", "participants": {"user001": {}, "user002": {}}},
    "retention": {"unreached": [{"target": "nas", "error": "Connection refused"}]},
}


def write_record(folder, record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run-record.json").write_text(json.dumps(record))
    return folder / "run-record.json"


def test_a_workshops_line_is_what_its_record_says(tmp_path):
    path = write_record(tmp_path, RECORD)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# Report\n")

    assert fleet_entry(str(path), str(tmp_path / "report")) == {
        "drained": True,
        "drained_at": "2026-11-29T17:02:11+00:00",
        "jobs_completed": 42,
        "jobs_failed": 3,
        "backup": "backup-2",
        "backup_verified": True,
        "archived": ["r2"],  # not the unverified copy, not the copy of an older backup
        "shared": {"delivery": "s3", "participants": 2, "until": "2026-12-06T17:00:00+00:00"},
        "report": str(tmp_path / "report" / "report.md"),
        "retention_unreached": ["nas"],
    }


@pytest.mark.parametrize(
    ("verify", "expected"),
    [
        ({"ok": True, "backup": "backup-2"}, True),
        ({"ok": False, "backup": "backup-2"}, False),
        ({"ok": True, "backup": "backup-1"}, False),  # a verification of an older backup says nothing of this one
        (None, None),
    ],
)
def test_backup_verified_is_the_verification_of_the_newest_backup(tmp_path, verify, expected):
    backup = {"name": "backup-2", **({"verify": verify} if verify else {})}
    path = write_record(tmp_path, {"backup": backup})
    assert fleet_entry(str(path), str(tmp_path / "report"))["backup_verified"] is expected


def test_a_workshop_with_no_record_yet_has_an_empty_line(tmp_path):
    assert fleet_entry(str(tmp_path / "run-record.json"), str(tmp_path / "report")) == {
        "drained": None,
        "drained_at": None,
        "jobs_completed": None,
        "jobs_failed": None,
        "backup": None,
        "backup_verified": None,
        "archived": [],
        "shared": None,
        "report": None,
        "retention_unreached": [],
    }


@pytest.mark.parametrize("check_mode", [False, True])
def test_the_module_reads_only_and_fails_naming_a_broken_record(tmp_path, capsys, check_mode):
    fleet_summary = load_module("fleet_summary")
    path = write_record(tmp_path, RECORD)
    args = {"run_record": str(path), "report_dir": str(tmp_path / "report"), "_ansible_check_mode": check_mode}
    with patch_module_args(args), pytest.raises(SystemExit):
        fleet_summary.main()
    result = json.loads(capsys.readouterr().out)
    assert result["changed"] is False and result["entry"]["jobs_completed"] == 42

    path.write_text("{not json")
    with patch_module_args(args), pytest.raises(SystemExit):
        fleet_summary.main()
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] is True and str(path) in result["msg"]


PLAYBOOK = """
- name: A phase that fails on some hosts
  hosts: workshop
  tasks:
    - name: Fail one item on ws-loop
      ansible.builtin.fail:
        msg: "item {{ item }} broke on {{ inventory_hostname }}"
      loop: [1, 2]
      when: inventory_hostname == 'ws-loop' and item == 2
    - name: A failure a rescue catches
      when: inventory_hostname == 'ws-rescued'
      block:
        - name: Fail, to be rescued
          ansible.builtin.fail:
            msg: rescued, not fatal
      rescue:
        - name: Rescue it
          ansible.builtin.debug:
            msg: rescued
- name: The summary
  ansible.builtin.import_playbook: {summary}
"""


@pytest.fixture
def small_fleet(tmp_path):
    """Four local 'workshops': two that go through, one failing in a loop, one unreachable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or sys.executable
    write_record(tmp_path / "backups" / "berlin", RECORD)
    local = f"ansible_connection=local ansible_python_interpreter={python} workshop_backup_root={tmp_path / 'backups'}"
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "[workshop]\n"
        f"ws-ok workshop_id=berlin {local}\n"
        f"ws-loop workshop_id=lisbon {local}\n"
        f"ws-rescued {local}\n"
        f"ws-gone workshop_id=oslo ansible_host=127.0.0.1 ansible_port={closed_port} ansible_user=nobody "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5'\n"
    )
    playbook = tmp_path / "fleet.yml"
    playbook.write_text(PLAYBOOK.replace("{summary}", str(REPO / "playbooks" / "fleet_summary.yml")))
    return inventory, playbook, closed_port


@pytest.mark.playbook
def test_the_summary_lists_every_host_with_its_outcome_on_screen_and_in_a_file(small_fleet, tmp_path):
    inventory, playbook, closed_port = small_fleet
    reports = tmp_path / "reports"

    # Check mode, and only a host that fails: Ansible runs no play after the one where the last host
    # failed, and the summary still comes, with the failure, under the workshop id -e gave.
    preview = run_playbook(
        str(playbook),
        "-i",
        str(inventory),
        "--check",
        "--limit",
        "ws-loop",
        extra_vars={"fleet_summary_dest": str(reports), "workshop_id": "madrid"},
        expect_ok=False,
    )
    assert "PLAY [Fleet summary]" not in preview.output
    screen = preview.output[preview.output.index("FLEET SUMMARY") :]
    assert "1 workshop: 0 went through the run, 1 failed." in screen and "not written (check mode)" in screen
    assert '- madrid (ws-loop): FAILED in play "A phase that fails on some hosts"' in screen
    assert not reports.exists()  # check mode prints and writes nothing
    # An empty -e workshop_id is not the inventory's (lisbon): the row is the host's.
    emptied = run_playbook(
        str(playbook), "-i", str(inventory), "--check", "--limit", "ws-loop", extra_vars={"workshop_id": ""}, expect_ok=False
    )
    assert '- ws-loop (ws-loop): FAILED in play "A phase that fails on some hosts"' in emptied.output
    nulled = run_playbook(
        str(playbook), "-i", str(inventory), "--check", "--limit", "ws-loop", extra_vars={"workshop_id": None}, expect_ok=False
    )
    assert '- ws-loop (ws-loop): FAILED in play "A phase that fails on some hosts"' in nulled.output

    run = run_playbook(str(playbook), "-i", str(inventory), extra_vars={"fleet_summary_dest": str(reports)}, expect_ok=False)

    assert run.recap["ws-loop"]["failed"] == 1 and run.recap["ws-gone"]["unreachable"] == 1
    written = sorted(reports.iterdir())
    assert [p.suffix for p in written] == [".json", ".md"] and written[0].stem == written[1].stem
    rows = json.loads(written[0].read_text())["workshops"]
    assert [(row["host"], row["workshop_id"], row["ok"]) for row in rows] == [
        ("ws-gone", "oslo", False),
        ("ws-loop", "lisbon", False),
        ("ws-ok", "berlin", True),
        ("ws-rescued", "ws-rescued", True),  # the rescued failure is no failure
    ]
    gone, loop, ok, rescued = rows
    assert gone["error"]["msg"].startswith("unreachable: ") and str(closed_port) in gone["error"]["msg"]
    assert loop["error"] == {
        "play": "A phase that fails on some hosts",
        "task": "Fail one item on ws-loop",
        "msg": "item 2 broke on ws-loop",
    }
    assert ok["drained_at"] == RECORD["drain"]["final_time"] and ok["jobs_completed"] == 42 and ok["archived"] == ["r2"]
    assert ok["backup"] == "backup-2" and ok["backup_verified"] is True and ok["report"] is None
    assert rescued["error"] is None and rescued["backup"] is None
    markdown = written[1].read_text()
    assert "4 workshops: 2 went through the run, 2 failed." in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("- ")]
    assert lines[1] == (
        '- lisbon (ws-loop): FAILED in play "A phase that fails on some hosts", task "Fail one item on ws-loop": '
        "item 2 broke on ws-loop"
    )
    assert lines[2] == (
        "- berlin (ws-ok): drained at 2026-11-29T17:02:11+00:00; jobs: 42 completed, 3 failed; backup backup-2 verified; "
        "archived: r2; shared: 2 participants by s3 until 2026-12-06T17:00:00+00:00; report: none; "
        "retention did NOT finish on nas (did not answer)"
    )
    assert "retention" not in lines[3]  # said only when a target did not answer
    screen = run.output[run.output.index("FLEET SUMMARY") :]
    assert all(line in screen for line in lines) and f"written to {written[1]}" in screen


INTERRUPTED_PLAYBOOK = """
- name: A phase that takes long
  hosts: workshop
  order: sorted
  tasks:
    - name: Wait for the admin
      ansible.builtin.shell: "touch {marker} && sleep 30"
      changed_when: false
- name: The summary
  ansible.builtin.import_playbook: {summary}
"""


@pytest.mark.playbook
def test_ctrl_c_gives_the_summary_with_where_each_workshop_stopped(small_fleet, tmp_path):
    inventory, _playbook, _port = small_fleet
    # Not reports/ beside the playbook, the default.
    marker, reports = tmp_path / "waiting", tmp_path / "fleet-reports"
    playbook = tmp_path / "long.yml"
    summary = str(REPO / "playbooks" / "fleet_summary.yml")
    playbook.write_text(INTERRUPTED_PLAYBOOK.replace("{marker}", str(marker)).replace("{summary}", summary))
    # One fork, the hosts in name order: ws-gone fails at once, ws-ok takes the long task, ws-rescued waits
    # for the fork, never given a task.
    limit = ["--limit", "ws-ok,ws-rescued,ws-gone", "--forks", "1"]
    # Where the summary goes, set in the inventory as an admin would: no host reaches the summary play to say it.
    inventory.write_text(inventory.read_text() + f"[workshop:vars]\nfleet_summary_dest={reports}\n")
    command = ["ansible-playbook", str(playbook), "-i", str(inventory), *limit]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        try:
            wait_for(marker.exists, timeout=60, what="ws-ok to start the long task")
            run.send_signal(signal.SIGINT)  # as Ctrl-C does to ansible-playbook
            output, _ = run.communicate(timeout=60)
        finally:
            run.kill()

    assert run.returncode == 99, output  # Ansible's own exit code for an interrupted run
    screen = output[output.index("FLEET SUMMARY") :]
    assert "3 workshops: 0 went through the run, 1 failed, 2 stopped by Ctrl-C. Every step is safe to re-run" in screen
    assert '- berlin (ws-ok): INTERRUPTED in play "A phase that takes long", task "Wait for the admin"' in screen
    assert '- oslo (ws-gone): FAILED in play "A phase that takes long", task "Wait for the admin": unreachable: ' in screen
    assert "- ws-rescued (ws-rescued): INTERRUPTED: the run was interrupted before its first task" in screen
    written = sorted(reports.iterdir())
    assert [p.suffix for p in written] == [".json", ".md"]
    assert written[1].read_text().startswith("# Fleet summary, ") and "(interrupted)" in written[1].read_text()
    summary = json.loads(written[0].read_text())
    assert summary["interrupted"] is True
    assert [(row["workshop_id"], row["error"].get("interrupted", False)) for row in summary["workshops"]] == [
        ("oslo", False),
        ("berlin", True),
        ("ws-rescued", True),
    ]


@pytest.fixture
def sigint_kept():
    """Callbacks driven in pytest's own process put their Ctrl-C handler in it: pytest's goes back after."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    ("skip_tags", "tags", "speaks"),
    [
        ((), ["always", "fleet_summary"], True),
        (("fleet_summary",), ["always", "fleet_summary"], False),
        (("always",), ["always", "fleet_summary"], False),
        ((), ["drain"], False),
    ],
)
def test_no_summary_when_its_tag_is_skipped_or_the_playbook_has_no_summary_play(
    monkeypatch, capsys, tmp_path, skip_tags, tags, speaks, sigint_kept
):
    """The callback speaks only in a run whose playbook has the summary play and does not skip it
    (in-process, on a real parsed playbook: the run itself is the test above)."""
    from ansible import context
    from ansible.executor.stats import AggregateStats
    from ansible.module_utils.common.collections import ImmutableDict
    from ansible.parsing.dataloader import DataLoader
    from ansible.playbook import Playbook
    from ansible.vars.manager import VariableManager

    sys.path.insert(0, str(REPO / "callback_plugins"))
    try:
        import fleet_summary
    finally:
        sys.path.remove(str(REPO / "callback_plugins"))
    monkeypatch.setattr(context, "CLIARGS", ImmutableDict(skip_tags=skip_tags, check=False, extra_vars=("fleet_summary_dest=",)))
    monkeypatch.delattr(load_extra_vars, "extra_vars", raising=False)  # Ansible keeps the first run's
    (tmp_path / "site.yml").write_text(f"- name: Some play\n  hosts: workshop\n  tags: {json.dumps(tags)}\n  tasks: []\n")
    loader = DataLoader()
    playbook = Playbook.load(str(tmp_path / "site.yml"), variable_manager=VariableManager(loader=loader), loader=loader)
    stats = AggregateStats()
    stats.increment("ok", "ws-ok")
    callback = fleet_summary.CallbackModule()
    callback.v2_playbook_on_start(playbook)
    callback.v2_playbook_on_stats(stats)
    out = capsys.readouterr().out
    assert ("FLEET SUMMARY" in out) is speaks
    assert ("Fleet summary on screen only (fleet_summary_dest is empty)" in out) is speaks


def test_the_default_folder_is_reports_beside_the_playbook_that_was_run(monkeypatch, capsys, tmp_path, sigint_kept):
    """Not beside playbooks/fleet_summary.yml, which post_workshop.yml imports (in-process, no -e)."""
    from ansible import context
    from ansible.executor.stats import AggregateStats
    from ansible.module_utils.common.collections import ImmutableDict
    from ansible.parsing.dataloader import DataLoader
    from ansible.playbook import Playbook
    from ansible.vars.manager import VariableManager

    sys.path.insert(0, str(REPO / "callback_plugins"))
    try:
        import fleet_summary
    finally:
        sys.path.remove(str(REPO / "callback_plugins"))
    monkeypatch.setattr(context, "CLIARGS", ImmutableDict(skip_tags=(), check=False, extra_vars=()))
    monkeypatch.delattr(load_extra_vars, "extra_vars", raising=False)  # Ansible keeps the first run's
    (tmp_path / "site.yml").write_text("- name: Summary\n  hosts: workshop\n  tags: [fleet_summary]\n  tasks: []\n")
    loader = DataLoader()
    playbook = Playbook.load(str(tmp_path / "site.yml"), variable_manager=VariableManager(loader=loader), loader=loader)
    stats = AggregateStats()
    stats.increment("failures", "ws-down")
    callback = fleet_summary.CallbackModule()
    callback.v2_playbook_on_start(playbook)
    callback.v2_playbook_on_stats(stats)
    written = sorted(p.suffix for p in (tmp_path / "reports").iterdir())
    assert written == [".json", ".md"] and f"written to {tmp_path / 'reports'}/fleet-" in capsys.readouterr().out


def test_a_share_without_a_recorded_delivery_reads_without_none():
    spec = importlib.util.spec_from_file_location("fleet_summary_callback", REPO / "callback_plugins" / "fleet_summary.py")
    callback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(callback)
    assert callback._shared({"shared": {"participants": 0, "delivery": None, "until": None}}) == "shared: 0 participants"
    assert callback._shared({"shared": {"participants": 2, "delivery": "s3", "until": "2026-12-06"}}) == (
        "shared: 2 participants by s3 until 2026-12-06"
    )
