"""Share phase on the staging workshop: 20 participants, some absent; each attending one downloads
their own archive through the link in their message and opens it with 7z and their password."""

import contextlib
import json
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from s3server import s3  # noqa: F401 - a fixture
from smtpserver import smtp  # noqa: F401 - a fixture
from test_share_playbook_unit import ArgvSampler

from conftest import BACKUP_ROOT, PROJECT_DIR, empty_staging, run_playbook, staging

USERS = [f"user{n:03d}" for n in range(1, 21)]
LINK = re.compile(r"Link:\s+(\S+)")


@pytest.fixture
def played_20(staging_workshop, rdb):
    """A workshop of 20 participants (loadgen: 80% attend), and the platform's USER_CREDENTIALS.txt for them.
    Played on an emptied workshop: outputs earlier tests of this slot left would make absent participants attend."""
    empty_staging(rdb)
    staging("play", staging_workshop_play_users=20, staging_workshop_play_jobs_per_user="1-2", staging_workshop_play_bursts=1)
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    credentials = PROJECT_DIR / "USER_CREDENTIALS.txt"
    credentials.write_text("# regenerate-user-passwords.sh\n" + "".join(f"{u}:{p}\n" for u, p in passwords.items()))
    credentials.chmod(0o600)
    yield passwords
    credentials.unlink()


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def open_zip(archive, password, into):
    return subprocess.run(["7z", "x", "-y", f"-p{password}", f"-o{into}", str(archive)], capture_output=True, check=False)


def test_each_attending_participant_gets_exactly_their_outputs(played_20, s3, smtp, tmp_path):  # noqa: F811 - the fixture
    passwords = played_20
    port, mailbox, _ = smtp
    workshop_id = f"share-{uuid.uuid4().hex[:8]}"
    (tmp_path / "roster.csv").write_text("user,name,email\n" + "".join(f"{u},P {u},{u}@example.org\n" for u in USERS))
    settings = {
        "workshop_id": workshop_id,
        "share_target": s3,
        "share_roster_file": str(tmp_path / "roster.csv"),
        "share_survey_url": "https://survey.example.org/staging",
        "share_smtp_host": "127.0.0.1",
        "share_smtp_port": port,
        "share_smtp_security": "none",
    }
    (tmp_path / "vars.json").write_text(json.dumps(settings))
    outputs = PROJECT_DIR / "data" / "outputs"
    attending = sorted(p.name for p in outputs.iterdir() if p.is_dir() and any(f.is_file() for f in p.rglob("*")))
    absent = sorted(set(USERS) - set(attending))
    assert 10 <= len(attending) < 20 and absent  # loadgen's seed: some came, some did not

    try:
        assert run_playbook("playbooks/share.yml", "-e", f"@{tmp_path / 'vars.json'}", check=True).changed() >= 2
        assert mailbox.messages == []

        sampler = ArgvSampler()
        sampler.start()
        run = run_playbook("playbooks/share.yml", "-vvv", "-e", f"@{tmp_path / 'vars.json'}")
        sampler.done.set()
        sampler.join()

        assert sorted(m[1][0].split("@")[0] for m in mailbox.messages) == attending
        for _, [address], message in mailbox.messages:
            user = address.split("@")[0]
            body = message.get_content()
            assert "https://survey.example.org/staging" in body and "Expires: " in body and passwords[user] not in body
            status, data = fetch(LINK.search(body).group(1))
            assert status == 200, data[:300]
            archive = tmp_path / f"{user}.zip"
            archive.write_bytes(data)
            assert open_zip(archive, passwords[user], tmp_path / user).returncode == 0
            # Exactly their files, byte-equal: nobody else's.
            assert tree(tmp_path / user) == {f"outputs/{name}": data for name, data in tree(outputs / user).items()}
            other = attending[(attending.index(user) + 1) % len(attending)]
            assert open_zip(archive, passwords[other], tmp_path / "wrong" / user).returncode != 0

        record = json.loads((BACKUP_ROOT / workshop_id / "run-record.json").read_text())["share"]
        assert sorted(record["participants"]) == attending and record["absent"] == absent
        assert f"No outputs (no archive): {', '.join(absent)}" in run.text
        exposed = {"output": run.output, "argv": "\n".join(sampler.seen), "record": json.dumps(record)}
        found = {where: [u for u, p in passwords.items() if p in text] for where, text in exposed.items()}
        assert found == {where: [] for where in exposed}

        again = run_playbook("playbooks/share.yml", "-e", f"@{tmp_path / 'vars.json'}")
        assert again.changed() == 0 and len(mailbox.messages) == len(attending)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(BACKUP_ROOT / workshop_id)
