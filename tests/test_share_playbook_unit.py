"""Share phase through its playbook, without Docker: a workshop project in a temp folder, delivery to
`rclone serve s3`, messages to aiosmtpd; links fetched over plain HTTP and archives opened with 7z."""

import contextlib
import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from s3server import s3  # noqa: F401 - a fixture
from smtpserver import smtp  # noqa: F401 - a fixture

from conftest import REPO, run_playbook

# Runs ansible-playbook (no Docker): the playbook tier, not make test-unit.
pytestmark = pytest.mark.playbook

PASSWORDS = {f"user{n:03d}": f"Pw{n}{os.urandom(6).hex()}" for n in range(1, 7)}
MADE = {
    "user001": {"a.png": os.urandom(50_000), "b/c.json": b"{}" * 3000},
    "user002": {"v.mp4": os.urandom(80_000)},
    "user004": {"z.png": os.urandom(2_000)},
}
ROSTER = "user,name,email\nuser001,Ada,ada@example.org\nuser002,Bob,bob@example.org\nuser003,Cy,cy@example.org\n"
LINK = re.compile(r"Link:\s+(\S+)")


@pytest.fixture
def site(tmp_path, s3, smtp):  # noqa: F811 - the fixture
    """A workshop project, a roster and a vars file (the S3 secrets in a file, not on the command line)."""
    project = tmp_path / "project"
    for user, files in MADE.items():
        for name, data in files.items():
            (project / "data" / "outputs" / user / name).parent.mkdir(parents=True, exist_ok=True)
            (project / "data" / "outputs" / user / name).write_bytes(data)
    (project / "data" / "outputs" / "user003").mkdir(parents=True)
    (project / "USER_CREDENTIALS.txt").write_text("# users\n" + "".join(f"{u}:{p}\n" for u, p in PASSWORDS.items()))
    (tmp_path / "roster.csv").write_text(ROSTER)
    port, mailbox, _ = smtp
    settings = {
        "workshop_id": "ws-share",
        "workshop_project_dir": str(project),
        "workshop_backup_root": str(tmp_path / "backups"),
        "share_target": s3,
        "share_roster_file": str(tmp_path / "roster.csv"),
        "share_survey_url": "https://survey.example.org/ws-share",
        "share_smtp_host": "127.0.0.1",
        "share_smtp_port": port,
        "share_smtp_security": "none",
        "share_sender": "team@example.org",
    }
    (tmp_path / "vars.json").write_text(json.dumps(settings))
    return {"tmp": tmp_path, "vars": f"@{tmp_path / 'vars.json'}", "mailbox": mailbox, "project": project}


def share(site, *args, check=False, **extra):
    return run_playbook("playbooks/share.yml", "-e", site["vars"], *args, extra_vars=extra or None, check=check)


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class ArgvSampler(threading.Thread):
    """Reads every process's command line while a run goes on, as `ps` would show it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen, self.done = set(), threading.Event()

    def run(self):
        while not self.done.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    with contextlib.suppress(OSError):  # a process that ended meanwhile
                        self.seen.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            self.done.wait(0.02)


def test_share_playbook_check_apply_idempotent_refresh(site):
    mailbox, tmp = site["mailbox"], site["tmp"]
    folder = tmp / "backups" / "ws-share"

    preview = share(site, check=True)
    assert preview.changed() >= 2 and not folder.exists() and mailbox.messages == []

    sampler = ArgvSampler()
    sampler.start()
    run = share(site, "-vvv")
    sampler.done.set()
    sampler.join()
    assert run.changed() == 3  # archives, messages, run record
    # Ada and Bob have outputs and addresses; Cy has an address but no outputs; user004 no address.
    assert [m[1] for m in mailbox.messages] == [["ada@example.org"], ["bob@example.org"]]
    assert "No email (outbox only): user004" in run.text and "No outputs (no archive): user003, user005, user006" in run.text
    for (_, _, message), user in zip(mailbox.messages, ["user001", "user002"], strict=True):
        body = message.get_content()
        assert "Please share your feedback: https://survey.example.org/ws-share" in body
        assert "See you next time!" in body and f"username {user}" in body
        status, data = fetch(LINK.search(body).group(1))
        assert status == 200, (LINK.search(body).group(1), data)
        (tmp / f"{user}.zip").write_bytes(data)
        command = ["7z", "x", f"-p{PASSWORDS[user]}", f"-o{tmp / user}", str(tmp / f"{user}.zip")]
        assert subprocess.run(command, capture_output=True, check=False).returncode == 0
        got = {str(p.relative_to(tmp / user)): p.read_bytes() for p in (tmp / user).rglob("*") if p.is_file()}
        assert got == {f"outputs/{n}": d for n, d in MADE[user].items()}

    record = json.loads((folder / "run-record.json").read_text())["share"]
    assert sorted(record["participants"]) == ["user001", "user002", "user004"]
    assert record["absent"] == ["user003", "user005", "user006"]
    assert record["participants"]["user001"]["sent_at"] and record["participants"]["user004"]["sent_at"] is None
    assert record["participants"]["user002"]["file_list"] == ["outputs/v.mp4"]
    assert record["survey_url"] == "https://survey.example.org/ws-share"  # the checklist's "Feedback collected"
    exposed = {
        "output": run.output,
        "argv": "\n".join(sampler.seen),
        "record": json.dumps(record),
        "outbox": "".join(p.read_text() for p in (folder / "share" / "outbox").iterdir()),
        "state": (folder / "share" / "share-state.json").read_text(),
    }
    found = {where: [u for u, p in PASSWORDS.items() if p in text] for where, text in exposed.items()}
    assert found == {where: [] for where in exposed}
    assert len(sampler.seen) > 10  # the sampler did see the run's processes

    again = share(site)
    assert again.changed() == 0 and len(mailbox.messages) == 2

    # Renewed right away, links keep: a refresh renews those past half their life (cron and a hand run mail once).
    assert share(site, "--tags", "share_refresh").changed() == 0 and len(mailbox.messages) == 2
    state_path = folder / "share" / "share-state.json"
    state = json.loads(state_path.read_text())
    for entry in state["participants"].values():  # four days on: past the half of the links' seven
        entry["link_issued"] -= 4 * 86400
        entry["link_expires"] -= 4 * 86400
    state_path.write_text(json.dumps(state))
    refreshed = share(site, "--tags", "share_refresh")
    assert refreshed.changed() >= 2 and len(mailbox.messages) == 4
    old_links = [LINK.search(m[2].get_content()).group(1) for m in mailbox.messages[:2]]
    new_links = [LINK.search(m[2].get_content()).group(1) for m in mailbox.messages[2:]]
    assert [link.split("?")[0] for link in new_links] == [link.split("?")[0] for link in old_links]
    assert new_links != old_links and all(fetch(link)[0] == 200 for link in new_links)
    command = f"cd {REPO} && ansible-playbook -i {REPO / 'inventory' / 'local'} playbooks/share.yml --tags share_refresh"
    assert f"{command} --limit localhost -e workshop_id=ws-share" in " ".join(refreshed.text.split())


def test_no_target_and_no_served_url_shares_nothing_and_says_why(site):
    run = share(site, share_target={})
    assert run.changed() == 0 and "Sharing is not configured for ws-share" in run.text
    assert not (site["tmp"] / "backups").exists()
