"""The verification checklist: its ten lines from a run record written by the phases' own record writers and
a sealed backup's manifest, each ✓ with its evidence and ✗ with its reason; the status follows; the module
writes checklist.json and the report's checklist, and rewrites nothing when the record is unchanged."""

import copy
import json

import pytest
from ansible.module_utils.workshop_checklist import FOLLOW_UP, ITEMS, READY, build_checklist, gather_facts
from ansible.module_utils.workshop_record import read_record, record_backup, record_verify, save_record, updated_record
from ansible.module_utils.workshop_report import update_checklist, write_report

from conftest import load_module

BACKUP = "backup-20261129T203630Z"
# The sealed backup's files (relative path: size), as its MANIFEST.json lists them.
MANIFEST = {
    "outputs.tar": 27_000_832,
    "user-files.tar": 40_960,
    "logs/workshop-logs.txt.gz": 9_000,
    "logs/worker-1.log.gz": 4_459,
    "logs/queue-manager.log.gz": 761,
    "redis/dump.rdb": 77_206,
    "config/.env": 780,
    "config/docker-compose.yml": 2_281,
}
BACKUP_DATA = {
    "outputs": {"bytes": 27_000_832, "files": 103, "links": 0},
    "redis": {
        "checksum": "ok",
        "keys": 95,
        "job_records": 60,
        "rdb_version": 12,
        "size": 77_206,
        "sha256": "4bb8a11e5d71" + "0" * 52,
    },
}
RESTORE_TEST = {
    "ok": True,
    "at": "2026-11-30T09:12:00+00:00",
    "backup": BACKUP,
    "source": "local",
    "seconds": 4.2,
    "files_compared": 8,
    "keys": {"loaded": 94, "volatile": 1, "recorded": 95},
    "queues": {},
    "failures": [],
}
SHARE = {
    "delivery": "folder",
    "outbox": "/backups/ws/share/outbox",
    "survey_url": "https://survey.example.org/ws",
    "participants": {
        "user001": {"to": "ada@example.org", "sent_at": "2026-11-29T21:00:00+00:00", "archive": "a.zip"},
        "user002": {"to": "bob@example.org", "sent_at": "2026-11-29T21:00:01+00:00", "archive": "b.zip"},
        "user003": {"to": "cy@example.org", "sent_at": "2026-11-29T21:00:02+00:00", "archive": "c.zip"},
    },
}
CLEANUP = {
    "at": "2026-12-02T08:00:00+00:00",
    "done": True,
    "removed": ["errors-found.txt", "warnings-found.txt"],
    "logs_rolled": {"archive": "workshop-logs-2026.tar.gz", "members": ["ws/workshop-logs-1.txt.gz"], "verified": True},
    "outputs_removed": 103,
}
READINESS = {"at": "2026-12-05T10:00:00+00:00", "ok": True, "lines": [{"item": "certificate", "ok": True}] * 6}


@pytest.fixture
def workshop(tmp_path):
    """A workshop folder: a sealed backup (its MANIFEST.json), the run record written by the backup's own
    record writer, then the later phases' sections, and a report folder."""
    folder = tmp_path / "ws"
    backup = folder / BACKUP
    backup.mkdir(parents=True)
    files = {name: {"size": size, "sha256": "0" * 64} for name, size in MANIFEST.items()}
    (backup / "MANIFEST.json").write_text(json.dumps({"name": BACKUP, "files": files}))
    record_path = str(folder / "run-record.json")
    record_backup(record_path, BACKUP, str(backup), len(MANIFEST), BACKUP_DATA)
    record = read_record(record_path)
    for section, data in (("restore_test", RESTORE_TEST), ("share", SHARE), ("cleanup", CLEANUP), ("readiness", READINESS)):
        record = updated_record(record, section, copy.deepcopy(data), False)
    save_record(record_path, record)
    report = folder / "report"
    report.mkdir()
    for name in ("report.md", "report.html", "metrics.json"):
        (report / name).write_text("x")
    return folder


def checklist_of(folder, record=None):
    record = read_record(str(folder / "run-record.json")) if record is None else record
    return build_checklist(record, gather_facts(record, str(folder / "report")))


def lines_by_key(checklist):
    return {line["key"]: line for line in checklist["lines"]}


def test_every_line_holds_with_its_evidence(workshop):
    checklist = checklist_of(workshop)
    assert [line["item"] for line in checklist["lines"]] == [item for _key, item in ITEMS]
    assert all(line["ok"] for line in checklist["lines"]), checklist
    assert checklist["status"] == READY and checklist["failing"] == []
    line = lines_by_key(checklist)
    assert line["outputs"]["evidence"].startswith(
        f"103 files, 27.0 MB (27000832 bytes) in outputs.tar of backup {BACKUP}, verified "
    )
    logs = 9_000 + 4_459 + 761
    assert line["logs"]["evidence"].startswith(f"3 gzip files, 14.2 kB ({logs} bytes) in backup {BACKUP}: ")
    assert "logs/workshop-logs.txt.gz and 2 per-service logs" in line["logs"]["evidence"]
    assert line["logs"]["evidence"].endswith("; rolled into workshop-logs-2026.tar.gz (1 member, verified)")
    assert line["snapshot"]["evidence"] == (
        f"redis/dump.rdb of backup {BACKUP}: 77206 bytes, RDB version 12, CRC ok, 95 keys (60 job records), sha256 4bb8a11e5d71…"
    )
    assert line["config"]["evidence"].startswith(f"config/.env, config/docker-compose.yml (3.1 kB) kept in backup {BACKUP}")
    report = workshop / "report"
    assert line["report"]["evidence"] == f"{report}/report.md, {report}/report.html, {report}/metrics.json"
    assert line["restore"]["evidence"] == (
        f"backup {BACKUP} restored 2026-11-30 09:12 UTC (8 files equal to the manifest, 94 keys loaded, in 4.2 s)"
    )
    assert line["notified"]["evidence"] == "3 messages sent by email (archives by folder, copies in /backups/ws/share/outbox)"
    assert line["feedback"]["evidence"].startswith("survey link https://survey.example.org/ws sent in 3 messages")
    assert line["cleanup"]["evidence"] == (
        "done 2026-12-02 08:00 UTC: 2 temporary files removed, 103 outputs removed from the VPS; "
        "rolled into workshop-logs-2026.tar.gz (1 member, verified)"
    )
    assert line["next_use"]["evidence"] == "readiness checked 2026-12-05 10:00 UTC: all 6 lines hold"


def _drop(section):
    def change(record, folder):
        record.pop(section)

    return change


def _set(path, value):
    def change(record, folder):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _unsent(record, folder):
    record["share"]["participants"]["user002"]["sent_at"] = None


def _plain_log(record, folder):
    manifest = folder / BACKUP / "MANIFEST.json"
    data = json.loads(manifest.read_text())
    data["files"]["logs/worker-2.log"] = {"size": 10, "sha256": "0" * 64}
    manifest.write_text(json.dumps(data))


def _no_report(record, folder):
    (folder / "report" / "report.html").unlink()


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (_set(["backup", "outputs"], None), "outputs", f"backup {BACKUP} records no outputs: run --tags backup"),
        (_plain_log, "logs", f"not compressed in backup {BACKUP}: logs/worker-2.log: make a new backup (--tags backup)"),
        (
            _set(["backup", "redis", "checksum"], "crc mismatch"),
            "snapshot",
            f"the snapshot of backup {BACKUP} did not pass its CRC check (crc mismatch): make a new backup (--tags backup)",
        ),
        (_no_report, "report", "report.html not in {report}: run --tags report"),
        (_drop("restore_test"), "restore", "no restore test yet: run playbooks/restore_test.yml"),
        (
            _set(["restore_test", "ok"], False),
            "restore",
            f"the restore test of backup {BACKUP} FAILED 2026-11-30 09:12 UTC (what failed was not recorded): "
            "make a new backup and run playbooks/restore_test.yml again",
        ),
        (
            _set(["restore_test", "backup"], "backup-20261129T170000Z"),
            "restore",
            "backup backup-20261129T170000Z restored 2026-11-30 09:12 UTC (8 files equal to the manifest, 94 keys loaded, "
            f"in 4.2 s), but the newest backup {BACKUP} was not restore-tested: run playbooks/restore_test.yml",
        ),
        (
            _drop("share"),
            "notified",
            "the outputs were not shared (no share in the run record; sharing needs share_target or share_base_url): "
            "run --tags share",
        ),
        (
            _unsent,
            "notified",
            "1 of 3 messages only in /backups/ws/share/outbox, not sent (user002): send those .eml files by hand, or set "
            "share_smtp_host (and an email per participant) and run --tags share",
        ),
        (
            _set(["share", "survey_url"], ""),
            "feedback",
            "the messages carry no survey link: set share_survey_url and run --tags share -e share_resend=true",
        ),
        (_drop("cleanup"), "cleanup", "cleanup not run: --tags cleanup"),
        (
            _set(["cleanup", "done"], False),
            "cleanup",
            "cleanup started 2026-12-02 08:00 UTC but is not done: run --tags cleanup again and read why it stopped",
        ),
        (
            _set(["retention"], {"at": "2026-12-02T08:00:00Z", "unreached": [{"target": "nas", "error": "Connection refused"}]}),
            "cleanup",
            "cleanup done 2026-12-02 08:00 UTC, but the retention schedule did not finish on the storage target nas, "
            "which did not answer: run --tags retention once it answers",
        ),
        (
            _drop("readiness"),
            "next_use",
            "no next-workshop readiness check yet: run playbooks/readiness.yml (and fill in the report's "
            "Recommendations for Next Time)",
        ),
        (
            _set(["readiness"], {"at": "2026-12-05T10:00:00Z", "ok": False, "lines": [{"item": "TLS certificate", "ok": False}]}),
            "next_use",
            "the readiness check 2026-12-05 10:00 UTC found problems (TLS certificate): fix them and run playbooks/readiness.yml",
        ),
    ],
)
def test_each_line_fails_alone_with_its_reason(workshop, change, key, reason):
    record = read_record(str(workshop / "run-record.json"))
    change(record, workshop)
    checklist = checklist_of(workshop, record)
    failing = [line for line in checklist["lines"] if not line["ok"]]
    # feedback needs a sent message: an unsent or absent share fails it too, with its own reason.
    expected = {key} | ({"feedback"} if key == "notified" and reason.startswith("the outputs") else set())
    assert {line["key"] for line in failing} == expected
    line = lines_by_key(checklist)[key]
    assert "evidence" not in line
    assert line["reason"] == reason.format(report=workshop / "report")
    assert checklist["status"] == FOLLOW_UP
    assert checklist["failing"] == [line["item"] for line in failing]


def test_a_pass_of_the_newest_backup_stands_when_an_older_one_is_tested_after_it(workshop):
    record = read_record(str(workshop / "run-record.json"))
    older = dict(RESTORE_TEST, backup="backup-20261129T170000Z", at="2026-11-30T10:00:00+00:00")
    record.update(restore_test=older, restore_tests={BACKUP: RESTORE_TEST, older["backup"]: older})
    line = lines_by_key(checklist_of(workshop, record))["restore"]
    assert line["ok"] and line["evidence"].startswith(f"backup {BACKUP} restored 2026-11-30 09:12 UTC"), line

    record["restore_tests"][BACKUP] = dict(RESTORE_TEST, ok=False)  # the newest's own test failed
    assert not lines_by_key(checklist_of(workshop, record))["restore"]["ok"]


def test_a_fetch_that_failed_before_a_backup_was_chosen_is_not_hidden_by_an_earlier_pass(workshop):
    # What the restore role records when the off-host target could not even be listed.
    record = read_record(str(workshop / "run-record.json"))
    unreachable = {"file": None, "reason": "s3://workshops/berlin: could not connect to the endpoint"}
    failed_fetch = dict(
        RESTORE_TEST, ok=False, backup=None, source="s3", fetched=False, at="2026-11-30T10:00:00+00:00", failures=[unreachable]
    )
    record.update(restore_test=failed_fetch, restore_tests={BACKUP: RESTORE_TEST})

    line = lines_by_key(checklist_of(workshop, record))["restore"]

    assert not line["ok"]
    assert line["reason"] == (
        "the restore test of the newest backup on s3 FAILED 2026-11-30 10:00 UTC: it could not be fetched intact "
        "(s3://workshops/berlin: could not connect to the endpoint): check that s3 answers (address, credentials) "
        "and holds an intact copy (--tags verify_remote reads it back, --tags archive copies it again), then run "
        "playbooks/restore_test.yml again"
    )

    # An older backup asked for by name, which the target did not give either: not a test of that backup.
    record["restore_test"] = dict(failed_fetch, backup="backup-20261129T170000Z")
    line = lines_by_key(checklist_of(workshop, record))["restore"]
    assert not line["ok"] and line["reason"].startswith(
        "the restore test of backup backup-20261129T170000Z on s3 FAILED 2026-11-30 10:00 UTC: it could not be fetched"
    )


def test_a_failed_verification_fails_the_backup_lines_naming_the_member(workshop):
    record_path = str(workshop / "run-record.json")
    assert record_verify(record_path, BACKUP, [{"file": "logs/worker-1.log.gz", "member": None, "reason": "sha256 differs"}])
    line = lines_by_key(checklist_of(workshop))
    assert not line["logs"]["ok"] and not line["outputs"]["ok"] and not line["config"]["ok"]
    assert line["logs"]["reason"] == (
        f"backup {BACKUP} FAILED verification (logs/worker-1.log.gz: sha256 differs): make a new backup (--tags backup)"
    )
    # A later verification that passes makes them hold again (ok: false is never left behind, nor kept).
    assert record_verify(record_path, BACKUP, [])
    assert all(line["ok"] for line in checklist_of(workshop)["lines"])


def test_no_record_fails_every_line():
    checklist = build_checklist({}, {})
    assert [line["ok"] for line in checklist["lines"]] == [False] * 10
    assert checklist["failing"] == [item for _key, item in ITEMS]
    assert lines_by_key(checklist)["outputs"]["reason"] == "no backup is recorded in the run record: run --tags backup"


# --- the module: checklist.json, the report's checklist, idempotence, check mode -------------------------------


def run_checklist_module(capsys, args, check=False):
    from ansible.module_utils.testing import patch_module_args

    module = load_module("workshop_checklist")
    with patch_module_args({**args, "_ansible_check_mode": check}), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


REPORT_INPUTS = dict(metrics=None, logs=None, gpu=None, gpu_reason="", network=None, network_reason="", context={})


def test_the_module_keeps_checklist_json_and_the_report_in_step_with_the_record(workshop, capsys):
    report, record_path = workshop / "report", workshop / "run-record.json"
    record = read_record(str(record_path))
    record.pop("restore_test")
    save_record(str(record_path), record)
    # The report phase wrote the report with the checklist of that time (no restore test yet).
    before = build_checklist(record, gather_facts(record, str(report)))
    inputs = dict(REPORT_INPUTS, record=record, checklist=before)
    write_report(str(report), inputs, "2026-11-29T21:30:00Z")
    assert "| ✗ | Backups verified (test restore one) | no restore test yet" in (report / "report.md").read_text()
    args = {"run_record": str(record_path), "report_dir": str(report)}

    # Check mode says what the record gives and which files would change, writing nothing.
    preview = run_checklist_module(capsys, args, check=True)
    assert preview["changed"] is True and not (report / "checklist.json").exists()
    assert preview["checklist"]["failing"] == ["Backups verified (test restore one)"]
    assert preview["table"][5] == "✗ Backups verified (test restore one): no restore test yet: run playbooks/restore_test.yml"
    assert preview["table"][-1] == "Status: NEEDS FOLLOW-UP: Backups verified (test restore one)"

    # The restore test passes: the checklist phase writes checklist.json and the report's checklist.
    save_record(str(record_path), updated_record(record, "restore_test", RESTORE_TEST, False))
    first = run_checklist_module(capsys, args)
    assert first["changed"] is True
    assert sorted(first["written"]) == sorted(str(report / name) for name in ("checklist.json", "report.md", "report.html"))
    written = json.loads((report / "checklist.json").read_text())
    assert written == first["checklist"] and written["status"] == READY
    # The report now says exactly what the report phase would write with this checklist: a report run
    # afterwards changes nothing, and its footer's status is READY FOR STORAGE.
    after = dict(inputs, record=read_record(str(record_path)), checklist=written)
    changed, texts, _stamp = write_report(str(report), after, "2026-11-30T10:00:00Z")
    assert changed is False
    assert (report / "report.md").read_text() == texts["report.md"]
    assert (report / "report.html").read_text() == texts["report.html"]
    assert "**Status:** <!-- status:begin -->READY FOR STORAGE<!-- status:end -->" in texts["report.md"]
    assert '<td class="mark">✓</td><td>Backups verified (test restore one)</td>' in texts["report.html"]

    # Unchanged record: nothing is rewritten.
    mtimes = {name: (report / name).stat().st_mtime_ns for name in ("checklist.json", "report.md", "report.html")}
    again = run_checklist_module(capsys, args)
    assert again["changed"] is False and again["written"] == []
    assert {name: (report / name).stat().st_mtime_ns for name in mtimes} == mtimes


def test_without_a_report_folder_it_only_shows_the_checklist(tmp_path, capsys):
    args = {"run_record": str(tmp_path / "run-record.json"), "report_dir": str(tmp_path / "report")}
    result = run_checklist_module(capsys, args)
    assert result["changed"] is False and result["written"] == []
    assert result["not_written"] == [
        f"{tmp_path / 'report'} does not exist yet: the report phase (--tags report) writes the checklist with the report"
    ]
    assert len(result["table"]) == 11 and all(line.startswith("✗ ") for line in result["table"][:10])
    assert list(tmp_path.iterdir()) == []


def test_a_report_without_checklist_markers_is_left_alone(tmp_path):
    (tmp_path / "report.md").write_text("# old report\n**Status:** _(to fill in)_\n")
    changed, updated, skipped = update_checklist(str(tmp_path), build_checklist({}, {}))
    assert (changed, updated) == (False, [])
    assert skipped == [str(tmp_path / "report.md"), str(tmp_path / "report.html")]
    assert (tmp_path / "report.md").read_text() == "# old report\n**Status:** _(to fill in)_\n"


def test_the_report_module_writes_checklist_json_beside_the_report(workshop, capsys):
    from test_report_unit import run_report_module

    report = workshop / "report"
    args = {"dest": str(report), "metrics": {}, "run_record": str(workshop / "run-record.json")}
    result = run_report_module(capsys, args)
    assert result["files"][-1] == str(report / "checklist.json")
    written = json.loads((report / "checklist.json").read_text())
    assert written == result["checklist"] and written["status"] == READY
    markdown = (report / "report.md").read_text()
    assert "## Verification Checklist" in markdown and "**Status:** <!-- status:begin -->READY FOR STORAGE" in markdown
    assert run_report_module(capsys, args)["changed"] is False


def test_only_copies_of_the_newest_backup_count_as_off_host(workshop):
    record = read_record(str(workshop / "run-record.json"))
    record["archive"] = {
        "targets": {
            "s3a": {"backup": BACKUP, "verified": True},
            "nas": {"backup": "backup-20261101T170211Z", "verified": True},  # an older backup's copy
            "usb": {"backup": BACKUP, "verified": False},
        }
    }
    evidence = lines_by_key(checklist_of(workshop, record))["outputs"]["evidence"]
    assert evidence.endswith("; verified off-host copies: s3a")
