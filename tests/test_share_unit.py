"""Share phase, fast tier: roster, per-participant AES zips opened with 7z, folder and S3 delivery with
presigned links fetched over plain HTTP (rclone serve s3), and messages through a real SMTP server."""

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_share import MAX_LINK_SECONDS, parse_credentials, parse_roster, share
from ansible.module_utils.workshop_share_messages import send_messages
from s3server import s3  # noqa: F401 - a fixture
from smtpserver import smtp, smtp_server  # noqa: F401 - smtp is a fixture

from conftest import load_module  # also adds module_utils to ansible.module_utils' path

PASSWORDS = {f"user{n:03d}": f"pw-{n}-{'x' * n}:colon" for n in range(1, 7)}
# user001..user004 made things; user005 attended the roster only; user006 never came.
MADE = {
    "user001": {"img_001.png": os.urandom(70_000), "sub/img_002.png": os.urandom(1000), "meta.json": b'{"a": 1}' * 500},
    "user002": {"clip.mp4": os.urandom(120_000)},
    "user003": {"img.webp": os.urandom(3000), "notes.txt": b"hello " * 1000},
    "user004": {"x.png": b""},
}


@pytest.fixture
def workshop(tmp_path):
    project = tmp_path / "project"
    outputs = project / "data" / "outputs"
    for user, files in MADE.items():
        for name, data in files.items():
            path = outputs / user / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    (outputs / "user005").mkdir()
    # A link from one participant's folder into another's must never carry their file along.
    os.symlink(outputs / "user002" / "clip.mp4", outputs / "user001" / "stolen.mp4")
    creds = project / "USER_CREDENTIALS.txt"
    creds.write_text("# made by regenerate-user-passwords.sh\n\n" + "".join(f"{u}:{p}\n" for u, p in PASSWORDS.items()))
    creds.chmod(0o600)
    return project


def params(project, tmp_path, **extra):
    return {
        "outputs_dir": str(project / "data" / "outputs"),
        "user_data_dir": None,
        "credentials_file": str(project / "USER_CREDENTIALS.txt"),
        "roster_csv": "user,name,email\nuser001,Ada Lovelace,ada@example.org\nuser002,Bob,\nuser003,Cy,cy@example.org\n",
        "pattern": r"^user\d+$",
        "share_dir": str(tmp_path / "backups" / "ws" / "share"),
        "workshop_id": "ws",
        "encryption": "workshop",
        "days": 30,
        "link_lifetime": MAX_LINK_SECONDS,
        "target": None,
        "folder": str(tmp_path / "served"),
        "base_url": "https://files.example.org/share",
        "refresh": False,
        "jobs": 3,
        "compress_level": 6,
        **extra,
    }


def open_with_7z(archive, password, into):
    """Extract with 7z (p7zip), the standard tool; the password goes through stdin-free -p (test data only)."""
    run = subprocess.run(["7z", "x", "-y", f"-p{password}", f"-o{into}", str(archive)], capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_credentials_and_roster_parse_as_the_platform_writes_them():
    assert parse_credentials("# comment\n\nuser001:a:b\n user002 :p \nbroken\n") == {"user001": "a:b", "user002": "p "}
    assert parse_roster("user001,Ada,ada@x.org\nuser002,,\n") == {
        "user001": {"name": "Ada", "email": "ada@x.org"},
        "user002": {"name": "", "email": ""},
    }
    assert parse_roster("Email,Name,User\nz@x.org,Zed,user009\n") == {"user009": {"name": "Zed", "email": "z@x.org"}}
    with pytest.raises(WorkshopError, match="Roster rows 1 and 3 both name user002"):
        parse_roster("user002,Bob Two,bob@x.org\nuser003,Cy,\nuser002,Bob Dup,bobdup@x.org\n")
    with pytest.raises(WorkshopError, match="not an email"):
        parse_roster("user001,Ada,not-an-address\n")
    with pytest.raises(WorkshopError, match=r"Roster row 2 \(user002\): the name 'Bob\\r\\nBcc: x@y.org' holds a line break"):
        parse_roster('user001,Ada,ada@x.org\nuser002,"Bob\r\nBcc: x@y.org",bob@x.org\n')


def test_each_participant_gets_only_their_own_files_encrypted_with_their_password(workshop, tmp_path):
    result = share(params(workshop, tmp_path), check_mode=False)

    assert [p["user"] for p in result["participants"]] == ["user001", "user002", "user003", "user004"]
    assert result["absent"] == ["user005", "user006"]
    assert result["no_email"] == ["user002", "user004"]
    for entry in result["participants"]:
        user = entry["user"]
        archive = tmp_path / "served" / entry["location"].split("/served/")[1]
        assert archive.is_file() and entry["link"] == f"https://files.example.org/share/{archive.parent.name}/{archive.name}"
        assert len(archive.parent.name) == 32 and int(archive.parent.name, 16) >= 0  # 128 random bits
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == entry["sha256"] and archive.stat().st_size == entry["bytes"]
        rc, _ = open_with_7z(archive, PASSWORDS[user], tmp_path / "x" / user)
        assert rc == 0
        expected = {f"outputs/{name}": data for name, data in MADE[user].items()}
        assert tree(tmp_path / "x" / user) == expected  # byte-equal, nobody else's file (not the linked clip)
        assert entry["file_list"] == sorted(expected)
        rc, out = open_with_7z(archive, PASSWORDS[user] + "wrong", tmp_path / "wrong" / user)
        assert rc != 0 and "Wrong password" in out
        listing = subprocess.run(["7z", "l", "-slt", str(archive)], capture_output=True, text=True, check=True).stdout
        paths = [line[7:] for line in listing.splitlines() if line.startswith("Path = ")][1:]
        kinds = [line[9:] for line in listing.splitlines() if line.startswith("Method = ")]
        assert len(paths) == len(kinds) == len(MADE[user])
        methods = dict(zip(paths, kinds, strict=True))
        for name, method in methods.items():
            assert method.startswith("AES-256"), (name, method)
            assert ("Store" in method) == name.endswith((".png", ".mp4", ".webp")), (name, method)
    # No password anywhere in what the phase returns.
    text = json.dumps(result)
    assert not [p for p in PASSWORDS.values() if p in text]
    state = Path(params(workshop, tmp_path)["share_dir"])
    assert oct(state.stat().st_mode & 0o777) == "0o700" and oct((state / "share-state.json").stat().st_mode & 0o777) == "0o600"


def test_links_leading_out_of_a_participant_s_own_folder_are_left_out_and_named(workshop, tmp_path):
    outputs = workshop / "data" / "outputs"
    (workshop / ".env").write_text("REDIS_PASSWORD=never-shared\n")
    os.symlink("../../../.env", outputs / "user003" / "env.txt")
    os.symlink("/etc/hostname", outputs / "user003" / "host.txt")
    os.symlink("user001", outputs / "user007")  # a participant folder that is another's

    result = share(params(workshop, tmp_path), check_mode=False)

    entries = {p["user"]: p for p in result["participants"]}
    assert sorted(entries) == ["user001", "user002", "user003", "user004"] and "user007" in result["absent"]
    archive = tmp_path / "served" / entries["user003"]["location"].split("/served/")[1]
    rc, _ = open_with_7z(archive, PASSWORDS["user003"], tmp_path / "x")
    assert rc == 0 and tree(tmp_path / "x") == {f"outputs/{name}": data for name, data in MADE["user003"].items()}
    [warning] = result["warnings"]
    for left_out in ("user001/stolen.mp4", "user003/env.txt", "user003/host.txt", "user007"):
        assert str(outputs / left_out) in warning, left_out
    assert "never-shared" not in json.dumps(result)


def test_a_folder_with_other_scripts_digits_is_no_participant_and_a_bad_id_is_named_where_it_is(workshop, tmp_path):
    (workshop / "data" / "outputs" / "user\u0660\u0660\u0669").mkdir()  # Arabic-Indic digits: \d took them

    preview = share(params(workshop, tmp_path), check_mode=True)
    assert [p["user"] for p in preview["roster"]] == [f"user00{n}" for n in range(1, 7)]
    bad_roster = params(workshop, tmp_path, roster_csv="user,name,email\nuser 01,Ada,ada@example.org\n")
    with pytest.raises(WorkshopError, match=r"'user 01' \(in the roster\) is not a participant id"):
        share(bad_roster, check_mode=True)


def test_outputs_written_after_the_workshop_ended_are_a_later_workshop_s_and_nothing_is_shared(workshop, tmp_path):
    from ansible.module_utils.workshop_record import save_record
    from ansible.module_utils.workshop_share import workshop_end
    from ansible.module_utils.workshop_time import utc_iso

    outputs = workshop / "data" / "outputs"
    ended = time.time() - 86400  # yesterday's workshop; its participants' files were written before its end
    for path in outputs.rglob("*"):
        os.utime(path, (ended - 3600, ended - 3600), follow_symlinks=False)
    record = tmp_path / "run-record.json"
    save_record(str(record), {"drain": {"drained": True, "final_time": utc_iso(ended)}})
    assert workshop_end(str(record)) == pytest.approx(ended, abs=0.001)

    assert share(params(workshop, tmp_path, ended=ended), check_mode=True)["built"] == [
        "user001",
        "user002",
        "user003",
        "user004",
    ]
    (outputs / "user002" / "today.png").write_bytes(b"today's workshop")  # the host's next workshop
    with pytest.raises(WorkshopError, match=r"1 files in the participants' folders were written after workshop ws ended"):
        share(params(workshop, tmp_path, ended=ended), check_mode=False)
    assert not (tmp_path / "served").exists() and not (tmp_path / "backups" / "ws" / "share").exists()
    # Not drained (or reopened): no end to compare with.
    save_record(str(record), {"drain": {"drained": False, "final_time": utc_iso(ended)}})
    assert workshop_end(str(record)) is None and workshop_end(None) is None


def test_a_second_run_on_unchanged_outputs_changes_nothing_and_a_new_file_rebuilds_one(workshop, tmp_path):
    first = share(params(workshop, tmp_path), check_mode=False)
    archives = {p["user"]: p["sha256"] for p in first["participants"]}
    assert first["changed"] and first["built"] == ["user001", "user002", "user003", "user004"]

    again = share(params(workshop, tmp_path), check_mode=False)
    assert not again["changed"] and again["built"] == again["uploaded"] == []
    assert {p["user"]: p["sha256"] for p in again["participants"]} == archives
    assert [p["link"] for p in again["participants"]] == [p["link"] for p in first["participants"]]

    (workshop / "data" / "outputs" / "user003" / "late.png").write_bytes(os.urandom(500))
    preview = share(params(workshop, tmp_path), check_mode=True)
    assert preview["changed"] and preview["built"] == ["user003"] and preview["uploaded"] == ["user003"]
    assert {p["user"]: p["sha256"] for p in share(params(workshop, tmp_path), check_mode=True)["participants"]}[
        "user001"
    ] == archives["user001"]
    third = share(params(workshop, tmp_path), check_mode=False)
    assert third["built"] == ["user003"] and third["uploaded"] == ["user003"]
    # Same unguessable place, new content.
    assert [p["link"] for p in third["participants"]] == [p["link"] for p in first["participants"]]


def test_participants_without_a_workshop_password_are_named_with_where_their_generated_ones_are(workshop, tmp_path):
    (workshop / "USER_CREDENTIALS.txt").write_text("user001:" + PASSWORDS["user001"] + "\n")

    result = share(params(workshop, tmp_path), check_mode=False)

    passwords = Path(params(workshop, tmp_path)["share_dir"]) / "share-passwords.json"
    warning, links = result["warnings"]
    assert "user001/stolen.mp4" in links  # the fixture's link into user002's folder
    assert f"No workshop password in {workshop / 'USER_CREDENTIALS.txt'} for user002, user003, user004" in warning
    assert str(passwords) in warning and sorted(json.loads(passwords.read_text())) == ["user002", "user003", "user004"]
    assert PASSWORDS["user001"] not in warning
    (workshop / "USER_CREDENTIALS.txt").unlink()
    assert (
        "(no such file, or no password in it) for user001, user002"
        in share(params(workshop, tmp_path), check_mode=True)["warnings"][0]
    )
    generated = share(params(workshop, tmp_path, encryption="generated"), check_mode=True)["warnings"]
    assert not [w for w in generated if "No workshop password" in w]  # the admin's choice


def test_generated_passwords_are_kept_and_none_builds_plain_zips(workshop, tmp_path):
    result = share(params(workshop, tmp_path, encryption="generated"), check_mode=False)
    kept = json.loads((Path(params(workshop, tmp_path)["share_dir"]) / "share-passwords.json").read_text())
    assert sorted(kept) == ["user001", "user002", "user003", "user004"] and all(len(p) >= 20 for p in kept.values())
    entry = result["participants"][1]
    archive = tmp_path / "served" / entry["location"].split("/served/")[1]
    assert open_with_7z(archive, kept["user002"], tmp_path / "g")[0] == 0
    assert open_with_7z(archive, PASSWORDS["user002"], tmp_path / "g2")[0] != 0
    assert not share(params(workshop, tmp_path, encryption="generated"), check_mode=False)["changed"]

    plain = share(params(workshop, tmp_path, encryption="none"), check_mode=False)
    assert plain["built"] == ["user001", "user002", "user003", "user004"]
    archive = tmp_path / "served" / plain["participants"][1]["location"].split("/served/")[1]
    assert (
        open_with_7z(archive, "", tmp_path / "p")[0] == 0
        and (tmp_path / "p" / "outputs" / "clip.mp4").read_bytes() == MADE["user002"]["clip.mp4"]
    )


def test_check_mode_writes_nothing(workshop, tmp_path):
    preview = share(params(workshop, tmp_path), check_mode=True)
    assert preview["changed"] and preview["built"] == ["user001", "user002", "user003", "user004"]
    assert not (tmp_path / "backups").exists() and not (tmp_path / "served").exists()


def fetch(url):
    """GET with plain HTTP (no SDK): (status, body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_s3_delivery_links_download_the_archive_and_expire(workshop, tmp_path, s3):  # noqa: F811 - the fixture
    issued_at = time.time()
    result = share(params(workshop, tmp_path, target=s3, folder=None, link_lifetime=8), check_mode=False)
    assert result["delivery"] == "s3" and result["uploaded"] == result["linked"] == ["user001", "user002", "user003", "user004"]
    for entry in result["participants"]:
        token = entry["location"].split("/")[-2]
        assert entry["location"] == f"s3://workshop-test/share/ws/{token}/ws-{entry['user']}-outputs.zip" and len(token) == 32
        status, body = fetch(entry["link"])
        assert status == 200 and hashlib.sha256(body).hexdigest() == entry["sha256"]
        (tmp_path / f"{entry['user']}.zip").write_bytes(body)
        assert open_with_7z(tmp_path / f"{entry['user']}.zip", PASSWORDS[entry["user"]], tmp_path / "s3" / entry["user"])[0] == 0
        assert tree(tmp_path / "s3" / entry["user"]) == {f"outputs/{n}": d for n, d in MADE[entry["user"]].items()}
    # Unsigned, or signed with the wrong key: refused.
    assert fetch(result["participants"][0]["link"].split("?")[0])[0] in (400, 403)
    assert fetch(result["participants"][0]["link"].replace("Signature=", "Signature=0"))[0] == 403

    # refresh: new links; the old ones stop working once past their expiry.
    old = result["participants"][0]["link"]
    refreshed = share(params(workshop, tmp_path, target=s3, folder=None, refresh=True), check_mode=False)
    assert refreshed["changed"] and refreshed["uploaded"] == [] and refreshed["linked"] == result["linked"]
    new = refreshed["participants"][0]["link"]
    assert new != old
    assert fetch(old)[0] == 200  # still inside its 8 seconds
    time.sleep(max(0, issued_at + 8 + 1.5 - time.time()))
    status, body = fetch(old)
    assert status in (400, 403) and b"AccessDenied" in body, (status, body)  # rclone: past X-Amz-Expires
    assert fetch(new)[0] == 200
    # The link of a long share period is capped at 7 days.
    issued = refreshed["participants"][0]
    from ansible.module_utils.workshop_time import epoch_of

    assert epoch_of(issued["link_expires"]) - epoch_of(issued["link_issued"]) == MAX_LINK_SECONDS
    again = share(params(workshop, tmp_path, target=s3, folder=None), check_mode=False)
    assert not again["changed"] and again["participants"][0]["link"] == new


@pytest.mark.fault
def test_a_wrong_s3_secret_names_the_target(workshop, tmp_path, s3, fault_case):  # noqa: F811 - the fixture
    fault_case("Object storage refusing the keys (share)", expected="share fails naming the target, bucket and prefix")
    with pytest.raises(WorkshopError, match=r"Share target 'test-s3'.*s3://workshop-test/share/ws/"):
        share(params(workshop, tmp_path, target={**s3, "secret_key": "nope"}, folder=None), check_mode=False)
    assert not list(Path(params(workshop, tmp_path)["share_dir"]).rglob("*.partial"))  # nothing half-written
    fault_case.observed("WorkshopError naming target 'test-s3' and s3://workshop-test/share/ws/; no .partial left")


def test_a_share_target_without_a_bucket_names_the_share_target_setting(workshop, tmp_path):
    target = {"name": "links", "type": "s3", "endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(WorkshopError, match=r"^Share target 'links' \(s3\) has no bucket: set bucket in share_target$"):
        share(params(workshop, tmp_path, target=target, folder=None), check_mode=False)


def messages_for(result, survey="https://survey.example.org/ws"):
    return [
        {
            "user": p["user"],
            "to": p["email"],
            "name": p["name"],
            "subject": "Your workshop outputs",
            "body": f"Link: {p['link']}\nExpires: {p['link_expires']}\nSurvey: {survey}\nPassword: @@PASSWORD@@\n",
            "date": p["link_issued"],
        }
        for p in result["participants"]
    ]


def message_params(tmp_path, result, port, **extra):
    share_dir = params(Path("/nonexistent"), tmp_path)["share_dir"]
    return {
        "messages": messages_for(result),
        "share_dir": share_dir,
        "outbox": os.path.join(share_dir, "outbox"),
        "sender": "workshop@example.org",
        "secret_in_message": False,
        "credentials_file": None,
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "username": "",
            "password": "",
            "timeout": 10,
            "ca_file": None,
        },
        "resend": False,
        **extra,
    }


def test_messages_are_written_sent_once_and_carry_no_password(workshop, tmp_path, smtp):  # noqa: F811 - the fixture
    port, mailbox, _ = smtp
    result = share(params(workshop, tmp_path), check_mode=False)

    preview = send_messages(message_params(tmp_path, result, port), check_mode=True)
    assert preview["changed"] and preview["sent"] == ["user001", "user003"] and mailbox.messages == []

    sent = send_messages(message_params(tmp_path, result, port), check_mode=False)
    assert sent["sent"] == ["user001", "user003"] and sent["no_email"] == ["user002", "user004"]
    assert [(m[1], m[2]["Subject"]) for m in mailbox.messages] == [
        (["ada@example.org"], "Your workshop outputs"),
        (["cy@example.org"], "Your workshop outputs"),
    ]
    body = mailbox.messages[0][2].get_content()
    first = result["participants"][0]
    assert f"Link: {first['link']}" in body and f"Expires: {first['link_expires']}" in body
    assert "Survey: https://survey.example.org/ws" in body and PASSWORDS["user001"] not in body
    outbox = Path(sent["outbox"])
    assert sorted(p.name for p in outbox.iterdir()) == ["user001.eml", "user002.eml", "user003.eml", "user004.eml"]
    assert not [p for p in PASSWORDS.values() for f in outbox.iterdir() if p in f.read_text()]

    again = send_messages(message_params(tmp_path, result, port), check_mode=False)
    assert not again["changed"] and again["sent"] == [] and len(mailbox.messages) == 2
    assert send_messages(message_params(tmp_path, result, port, resend=True), check_mode=False)["sent"] == ["user001", "user003"]


def test_the_password_goes_in_only_when_the_admin_chooses(workshop, tmp_path, smtp):  # noqa: F811 - the fixture
    port, mailbox, _ = smtp
    result = share(params(workshop, tmp_path), check_mode=False)
    send_messages(
        message_params(tmp_path, result, port, secret_in_message=True, credentials_file=str(workshop / "USER_CREDENTIALS.txt")),
        check_mode=False,
    )
    assert f"Password: {PASSWORDS['user001']}" in mailbox.messages[0][2].get_content()


@pytest.mark.fault
def test_an_unreachable_smtp_server_is_named(workshop, tmp_path, fault_case):
    fault_case("SMTP server unreachable (share messages)", expected="sending fails naming the server")
    result = share(params(workshop, tmp_path), check_mode=False)
    with pytest.raises(WorkshopError, match=r"Cannot reach the SMTP server 127.0.0.1:1 "):
        send_messages(message_params(tmp_path, result, 1), check_mode=False)
    fault_case.observed("'Cannot reach the SMTP server 127.0.0.1:1'")


def run_main(name, args, capsys):
    from ansible.module_utils.testing import patch_module_args

    module = load_module(name)
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_the_module_previews_in_check_mode_then_builds(workshop, tmp_path, capsys):
    args = {
        "outputs_dir": str(workshop / "data" / "outputs"),
        "credentials_file": str(workshop / "USER_CREDENTIALS.txt"),
        "share_dir": str(tmp_path / "backups" / "ws" / "share"),
        "workshop_id": "ws",
        "folder": str(tmp_path / "served"),
        "base_url": "https://files.example.org/share",
    }
    preview = run_main("share_archives", {**args, "_ansible_check_mode": True}, capsys)
    assert preview["changed"] and preview["built"] == ["user001", "user002", "user003", "user004"]
    assert not (tmp_path / "backups").exists() and not (tmp_path / "served").exists()
    built = run_main("share_archives", args, capsys)
    links = [p["link"] for p in built["participants"]]
    assert built["changed"] and len(links) == 4 and all(link.startswith("https://files.example.org/share/") for link in links)
    assert run_main("share_archives", args, capsys)["changed"] is False
    over_ssh = {key: value for key, value in args.items() if key != "folder"}
    failed = run_main("share_archives", {**over_ssh, "target": {"name": "box", "type": "ssh"}}, capsys)
    assert failed["failed"] and "share_target 'box' is of type ssh" in failed["msg"]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_messages_go_over_tls_with_the_login(workshop, tmp_path, security):
    servers = smtp_server(security, folder=tmp_path, login=("team", "s3cret-login"))
    port, mailbox, cert = next(servers)
    try:
        result = share(params(workshop, tmp_path), check_mode=False)
        smtp = {"host": "127.0.0.1", "port": port, "security": security, "username": "team", "timeout": 10}
        good = message_params(tmp_path, result, port, smtp={**smtp, "password": "s3cret-login", "ca_file": str(cert)})
        assert send_messages(good, check_mode=False)["sent"] == ["user001", "user003"]
        assert [m[1] for m in mailbox.messages] == [["ada@example.org"], ["cy@example.org"]] and mailbox.logins == ["team"]
        # A certificate nobody vouches for, or a wrong login, stops the sending with the server named.
        with pytest.raises(WorkshopError, match=rf"Cannot reach the SMTP server 127.0.0.1:{port} \({security}\).*CERTIFICATE"):
            send_messages({**good, "resend": True, "smtp": {**good["smtp"], "ca_file": None}}, check_mode=False)
        refused = rf"The SMTP server 127.0.0.1:{port} \({security}\) refused the login of team: 535 .*check share_smtp's username"
        with pytest.raises(WorkshopError, match=refused):
            send_messages({**good, "resend": True, "smtp": {**good["smtp"], "password": "wrong"}}, check_mode=False)
        assert len(mailbox.messages) == 2
    finally:
        next(servers, None)


def test_archives_are_built_streaming_with_flat_memory(tmp_path):
    """A 160 MB participant (stored and deflated entries) fits in a process that never grows by more than a few MiB."""
    big = tmp_path / "clip.mp4"
    with big.open("wb") as out:
        for _ in range(80):
            out.write(os.urandom(1 << 20))
    script = f"""
import resource, sys
import ansible.module_utils
ansible.module_utils.__path__.append({str(Path(__file__).resolve().parent.parent / "module_utils")!r})
from ansible.module_utils.workshop_share import build_archive
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
files = [("outputs/clip.mp4", {str(big)!r}, 0, 0), ("outputs/clip.bin", {str(big)!r}, 0, 0)]
build_archive({str(tmp_path / "big.zip")!r}, files, "pw")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    grown = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert (tmp_path / "big.zip").stat().st_size > 160 << 20
    assert grown < 24, f"the build grew the process by {grown} MiB"


def test_an_archive_cut_short_by_the_disk_fails_naming_it_leaves_nothing_and_no_half_open_zip(tmp_path):
    """A write refused mid-entry (here the file size limit, EFBIG, as a full disk refuses with ENOSPC) is named
    with the archive, the partial file goes, and the process ends without pyzipper's "cannot close" traceback."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(os.urandom(3 << 20))
    script = f"""
import gc, resource, signal
import ansible.module_utils
ansible.module_utils.__path__.append({str(Path(__file__).resolve().parent.parent / "module_utils")!r})
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_share import build_archive
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    build_archive({str(tmp_path / "user001.zip")!r}, [("outputs/clip.mp4", {str(clip)!r}, 0, 0)], "pw")
except WorkshopError as exc:
    print(exc.msg)
gc.collect()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.startswith(f"Cannot write the archive {tmp_path / 'user001.zip'}: File too large"), run.stdout
    assert run.stderr == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.mp4"]


def test_saved_workflows_go_in_when_asked(workshop, tmp_path):
    user_data = workshop / "data" / "user_data"
    (user_data / "user001" / "workflows").mkdir(parents=True)
    (user_data / "user001" / "workflows" / "flux.json").write_bytes(b'{"nodes": []}')
    (user_data / "user002").mkdir()
    without = share(params(workshop, tmp_path), check_mode=False)
    assert without["participants"][0]["file_list"] == sorted(f"outputs/{n}" for n in MADE["user001"])

    result = share(params(workshop, tmp_path, user_data_dir=str(user_data)), check_mode=False)
    assert result["built"] == ["user001"]  # only the archive whose content changed
    entry = result["participants"][0]
    assert entry["file_list"] == [*sorted(f"outputs/{n}" for n in MADE["user001"]), "workflows/workflows/flux.json"]
    archive = tmp_path / "served" / entry["location"].split("/served/")[1]
    assert open_with_7z(archive, PASSWORDS["user001"], tmp_path / "wf")[0] == 0
    assert (tmp_path / "wf" / "workflows" / "workflows" / "flux.json").read_bytes() == b'{"nodes": []}'
