# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sharing outputs with participants: the roster, one encrypted zip each, and their delivery.

Participants come from the workshop (USER_CREDENTIALS.txt, the folders of data/outputs) and an
optional CSV roster. Each participant with outputs gets a zip holding only their own files,
AES-256 encrypted (WinZip AES, through pyzipper) with their workshop password or a generated one.
Passwords are read here, on the host, and never leave it: not in module arguments, results or
the run record. The share state (tokens, links, fingerprints) lives in a 0600 file in the
workshop's folder, so a second run on unchanged outputs changes nothing.
"""

import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import atomic_file, inside, open_for_writing, sha256_file, walk_tree, write_atomically
from ansible.module_utils.workshop_record import read_record
from ansible.module_utils.workshop_s3 import s3_client, s3_error
from ansible.module_utils.workshop_time import epoch_of, utc_iso

try:
    import pyzipper

    HAS_PYZIPPER = True
    PYZIPPER_IMPORT_ERROR = None
except ImportError:
    HAS_PYZIPPER = False
    PYZIPPER_IMPORT_ERROR = traceback.format_exc()

# Already compressed: stored, not deflated (deflating them costs time and saves nothing).
STORED_SUFFIXES = frozenset(
    (".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif", ".mp4", ".webm", ".mov", ".mkv", ".m4v", ".mp3", ".m4a")
) | frozenset((".ogg", ".opus", ".flac", ".zip", ".gz", ".xz", ".zst", ".7z"))
# SigV4 caps a presigned link at 7 days on every S3-compatible server.
MAX_LINK_SECONDS = 7 * 24 * 3600
STATE_NAME = "share-state.json"
PASSWORDS_NAME = "share-passwords.json"
FOLDER_MODE = 0o700
CHUNK = 1 << 20
# An output written this long (seconds) after the drain's end (its last completion) is not the workshop's:
# the outputs folder has moved on to a later workshop on the host.
LATE_AFTER_END = 600


# ---------------------------------------------------------------- roster


def parse_credentials(text):
    """{user: password} of a USER_CREDENTIALS.txt text: `#` comments, then `username:password` lines."""
    found = {}
    for line in text.splitlines():
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        user, _dummy, password = line.partition(":")
        if user.strip():
            found[user.strip()] = password
    return found


def read_credentials(path):
    """The participants' passwords from USER_CREDENTIALS.txt on the host; {} when the file is absent."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as creds:
            return parse_credentials(creds.read())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise WorkshopError(
            f"Cannot read {path}: {exc.strerror} (run as the user owning it, or become root)", path=path
        ) from None


def parse_roster(text):
    """{user: {"name", "email"}} of a CSV roster (user id, name, email), with or without a header row."""
    rows = [row for row in csv.reader(io.StringIO(text or "")) if row and any(cell.strip() for cell in row)]
    if not rows:
        return {}
    columns = {"user": 0, "name": 1, "email": 2}
    header = [cell.strip().lower() for cell in rows[0]]
    if any(cell in ("email", "e-mail", "mail", "user", "user_id", "id", "name", "username") for cell in header):
        columns = {}
        for index, cell in enumerate(header):
            if cell in ("user", "user_id", "userid", "id", "username") and "user" not in columns:
                columns["user"] = index
            elif cell in ("name", "full name", "full_name") and "name" not in columns:
                columns["name"] = index
            elif cell in ("email", "e-mail", "mail") and "email" not in columns:
                columns["email"] = index
        if "user" not in columns:
            raise WorkshopError(f"The roster's header {rows[0]} has no user id column (user, user_id or id)")
        rows = rows[1:]
    roster, row_of = {}, {}
    for number, row in enumerate(rows, start=1):

        def cell(name, row=row):
            index = columns.get(name)
            return row[index].strip() if index is not None and index < len(row) else ""

        user = cell("user")
        if not user:
            raise WorkshopError(f"Roster row {number} has no user id: {row}")
        email = cell("email")
        if re.search(r"[\x00-\x1f\x7f]", cell("name")):
            # It goes into the message's To: header, which no line break or control character may enter.
            name = cell("name")
            raise WorkshopError(f"Roster row {number} ({user}): the name {name!r} holds a line break or control character")
        if email and not re.match(r"^[^@\s]+@[^@\s]+$", email):
            raise WorkshopError(f"Roster row {number} ({user}): '{email}' is not an email address")
        if user in row_of:
            raise WorkshopError(
                f"Roster rows {row_of[user]} and {number} both name {user}: keep the one whose address is right", user=user
            )
        row_of[user] = number
        roster[user] = {"name": cell("name"), "email": email}
    return roster


def participant_files(outputs_dir, user_data_dir, user):
    """A participant's own files and what was left out: ([(arcname, path, size, mtime_ns)], [paths left out]).

    Only what really lies in their own folder goes in (outputs/..., and workflows/... when asked): a link
    leading anywhere else (another participant's folder, the project's .env, /etc) is left out, and so
    is a participant folder that is itself a link to another place.
    """
    files, left_out = [], []
    for root, prefix in ((outputs_dir, "outputs/"), (user_data_dir, "workflows/")):
        if not root:
            continue
        folder = os.path.join(root, user)
        if not os.path.isdir(folder):
            continue
        real_own = os.path.join(os.path.realpath(root), user)
        if os.path.realpath(folder) != real_own:
            left_out.append(folder)
            continue
        for entry in walk_tree(folder):
            if entry.kind != "file":
                continue
            if inside(os.path.realpath(entry.path), real_own):
                files.append((prefix + entry.relpath, entry.path, entry.size, entry.mtime_ns))
            else:
                left_out.append(entry.path)
    return files, left_out


def build_roster(outputs_dir, credentials, roster, pattern, user_data_dir=None):
    """Every participant, sorted: from the credentials, the roster and the output folders.

    Each is {user, name, email, files, bytes}; one with no files is absent (listed, no archive).
    """
    # ASCII: \d would also take other scripts' digits (Arabic-Indic ones, say), which no participant id has.
    matcher = re.compile(pattern, re.ASCII)
    folders = set()
    if os.path.isdir(outputs_dir):
        folders = {
            name for name in os.listdir(outputs_dir) if matcher.match(name) and os.path.isdir(os.path.join(outputs_dir, name))
        }
    users = set(credentials) | set(roster) | folders
    participants = []
    for user in sorted(users):
        if not re.match(r"^[a-zA-Z0-9_-]{1,100}$", user, re.ASCII):
            sources = (("the roster", roster), ("the credentials file", credentials), (f"folder {outputs_dir}", folders))
            where = [source for source, ids in sources if user in ids]
            raise WorkshopError(
                f"'{user}' (in {' and '.join(where)}) is not a participant id (letters, digits, _ and -): fix or rename it",
                user=user,
            )
        files, left_out = participant_files(outputs_dir, user_data_dir, user)
        info = roster.get(user, {})
        participants.append(
            {
                "user": user,
                "name": info.get("name", ""),
                "email": info.get("email", ""),
                "files": files,
                "bytes": sum(f[2] for f in files),
                "left_out": left_out,
            }
        )
    return participants


# ---------------------------------------------------------------- archives


def fingerprint(files, password, encryption):
    """What the archive depends on: names, sizes, times, encryption and (hashed) password."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[f[0], f[2], f[3]] for f in files]).encode())
    digest.update(encryption.encode())
    digest.update(hashlib.sha256(b"comfy-wrapup share\0" + (password or "").encode()).digest())
    return digest.hexdigest()


def stored(arcname):
    return os.path.splitext(arcname)[1].lower() in STORED_SUFFIXES


def build_archive(dest, files, password, compress_level=6):
    """Write the zip of `files` to `dest` through a temporary name; returns {bytes, sha256}.

    Streaming: each file is copied in 1 MiB chunks into the archive, so memory stays flat
    whatever the sizes. PNG/MP4/... are stored, the rest deflated; with a password every entry
    is AES-256 encrypted (WinZip AES).
    """
    try:
        with atomic_file(dest) as target:
            with open_for_writing(target.tmp) as raw:
                archive = pyzipper.AESZipFile(raw, "w", compression=pyzipper.ZIP_DEFLATED, compresslevel=compress_level)
                try:
                    if password:
                        archive.setpassword(password.encode())
                        archive.setencryption(pyzipper.WZ_AES, nbits=256)
                    for arcname, path, _size, _mtime in files:
                        info = archive.zipinfo_cls.from_file(path, arcname)
                        info.compress_type = pyzipper.ZIP_STORED if stored(arcname) else pyzipper.ZIP_DEFLATED
                        with open(path, "rb") as source, archive.open(info, "w", force_zip64=True) as entry:
                            shutil.copyfileobj(source, entry, CHUNK)
                except BaseException:
                    # An entry that failed (a full disk) leaves pyzipper's writing handle open (its close has no
                    # `finally`, unlike zipfile's), and the archive then refuses to close, again when collected,
                    # in whatever code runs then. Nothing more is written to it: the partial file goes.
                    archive.fp = None
                    raise
                archive.close()
            # The digest is of the bytes on disk, read back, not of what was meant to be written.
            digest = sha256_file(target.tmp)
            size = os.path.getsize(target.tmp)
    except OSError as exc:
        raise WorkshopError(f"Cannot write the archive {dest}: {exc.strerror or exc}", path=dest) from None
    return {"bytes": size, "sha256": digest}


# ---------------------------------------------------------------- state


def ensure_folder(path, mode=FOLDER_MODE):
    if not os.path.isdir(path):
        os.makedirs(path, mode=mode, exist_ok=True)
    if os.stat(path).st_mode & 0o777 != mode:
        os.chmod(path, mode)


def read_json(path):
    try:
        with open(path, encoding="utf-8") as source:
            return json.load(source)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise WorkshopError(f"{path} is not valid JSON ({exc}): move it aside to start the share afresh", path=path) from None


def write_json(path, data):
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def new_token():
    """An unguessable name part: 128 random bits."""
    return secrets.token_hex(16)


def generated_password():
    return secrets.token_urlsafe(15)


def passwords_for(participants, mode, credentials, passwords_path, check_mode):
    """{user: password or ""} for the participants: their workshop password, a generated one, or none.

    Generated passwords are kept in a 0600 file beside the share state, so a rebuild keeps them.
    A participant without a workshop password (absent from USER_CREDENTIALS.txt) gets a generated one.
    """
    if mode == "none":
        return {p["user"]: "" for p in participants}
    kept = read_json(passwords_path)
    result, added = {}, False
    for participant in participants:
        user = participant["user"]
        if mode == "workshop" and credentials.get(user):
            result[user] = credentials[user]
        elif participant["files"]:
            if user not in kept:
                kept[user] = generated_password()
                added = True
            result[user] = kept[user]
        else:
            result[user] = ""
    if added and not check_mode:
        write_json(passwords_path, kept)
    return result


def password_source(mode, credentials, user):
    if mode == "none":
        return "none"
    return "workshop" if mode == "workshop" and credentials.get(user) else "generated"


# ---------------------------------------------------------------- delivery


def human_time(epoch):
    """A time for people, with its time zone: "6 December 2026, 18:00 UTC"."""
    moment = time.gmtime(epoch)
    return f"{moment.tm_mday} {time.strftime('%B %Y, %H:%M', moment)} UTC"


def archive_name(workshop_id, user):
    return f"{workshop_id}-{user}-outputs.zip"


def folder_deliver(archive, share_folder, token, name, sha256, check_mode):
    """Copy the archive to <share_folder>/<token>/<name> unless the same bytes are there; returns changed."""
    dest_dir = os.path.join(share_folder, token)
    dest = os.path.join(dest_dir, name)
    if os.path.isfile(dest) and sha256_file(dest) == sha256:
        return False
    if check_mode:
        return True
    os.makedirs(dest_dir, mode=0o755, exist_ok=True)
    try:
        with atomic_file(dest) as target:
            shutil.copyfile(archive, target.tmp)
            os.chmod(target.tmp, 0o644)
            if sha256_file(target.tmp) != sha256:
                raise WorkshopError(
                    f"The copy of {archive} to {dest} differs from it: check the disk of {share_folder}", path=dest
                )
    except OSError as exc:
        raise WorkshopError(f"Cannot copy {archive} to {dest}: {exc.strerror}", path=dest) from None
    return True


def s3_key(target, workshop_id, token, name):
    prefix = (target.get("prefix") or "").strip("/")
    return "/".join(part for part in (prefix, "share", workshop_id, token, name) if part)


def s3_deliver(client, target, archive, key, sha256, check_mode):
    """Upload the archive under `key` unless an object with the same sha256 is there; returns changed."""
    try:
        head = client.head_object(Bucket=target["bucket"], Key=key)
        # Some servers (rclone) return metadata names capitalised.
        if {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}.get("sha256") == sha256:
            return False
    except Exception as exc:  # noqa: BLE001 - a missing object answers 404; anything else is reported below
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code not in ("404", "NoSuchKey", "NotFound"):
            raise s3_error(target, "HEAD", key, exc, use="share") from None
    if check_mode:
        return True
    extra = {"Metadata": {"sha256": sha256}, "ContentType": "application/zip"}
    if target.get("storage_class"):
        extra["StorageClass"] = target["storage_class"]
    try:
        client.upload_file(archive, target["bucket"], key, ExtraArgs=extra)
    except Exception as exc:  # noqa: BLE001 - boto3's S3UploadFailedError wraps the ClientError
        raise s3_error(target, "PUT", key, exc, use="share") from None
    return True


def presign(client, target, key, seconds):
    try:
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": target["bucket"], "Key": key}, ExpiresIn=int(seconds)
        )
    except Exception as exc:  # noqa: BLE001
        raise s3_error(target, "presign GET", key, exc, use="share") from None


# ---------------------------------------------------------------- the phase


def workshop_end(record_path):
    """The workshop's end (epoch) as its run record has it: the drain's final_time, once drained; else None."""
    if not record_path:
        return None
    drain = read_record(record_path).get("drain") or {}
    return epoch_of(drain.get("final_time")) if drain.get("drained") is True else None


def refuse_later_files(participants, workshop_id, ended):
    """Fail, naming them, when files in the participants' folders were written well after the workshop ended."""
    late = sorted(
        (mtime_ns, path)
        for participant in participants
        for _arcname, path, _size, mtime_ns in participant["files"]
        if mtime_ns / 1e9 > ended + LATE_AFTER_END
    )
    if late:
        mtime_ns, path = late[-1]
        raise WorkshopError(
            f"{len(late)} files in the participants' folders were written after workshop {workshop_id} ended "
            f"({utc_iso(ended)}), the newest {path} at {utc_iso(mtime_ns / 1e9)}: they are a later workshop's, and "
            "would go to this one's participants. Share a workshop before the next one starts on the host; if this "
            "one went on after its drain, reopen and drain it again (-e drain_reopen=true, then the drain) so that "
            "its end is recorded anew. Nothing was built or sent",
            late_files=len(late),
        )


def share(params, check_mode, now=None, client_factory=None):
    """Build, deliver and link every attending participant's archive; returns the result of the phase.

    params: outputs_dir, user_data_dir (or None), credentials_file, roster_csv (text), pattern,
    share_dir, workshop_id, encryption (workshop/generated/none), days, target (s3 dict or None),
    folder, base_url, refresh, jobs, compress_level, link_lifetime (seconds, at most 7 days).
    """
    now = time.time() if now is None else now
    share_dir = params["share_dir"]
    state_path = os.path.join(share_dir, STATE_NAME)
    state = read_json(state_path)
    credentials = read_credentials(params.get("credentials_file"))
    roster = parse_roster(params.get("roster_csv") or "")
    participants = build_roster(params["outputs_dir"], credentials, roster, params["pattern"], params.get("user_data_dir"))
    if params.get("ended") is not None:
        refuse_later_files(participants, params["workshop_id"], params["ended"])
    if not check_mode:
        # The workshop folder, when this phase is the first to make it, gets its one mode (0700).
        parent = os.path.dirname(share_dir.rstrip("/"))
        if parent and not os.path.isdir(parent):
            ensure_folder(parent)
        ensure_folder(share_dir)
        ensure_folder(os.path.join(share_dir, "archives"))
    passwords = passwords_for(
        participants, params["encryption"], credentials, os.path.join(share_dir, PASSWORDS_NAME), check_mode
    )
    target = params.get("target")
    delivery = "s3" if target else "folder"
    if delivery == "folder" and not params.get("folder"):
        raise WorkshopError("No share target and no share folder: set share_target (S3) or share_folder")
    started = state.get("started_at") or int(now)
    if params.get("refresh") and state.get("ends_at") and now >= state["ends_at"]:
        raise WorkshopError(
            f"The share period ended at {utc_iso(state['ends_at'])}: links are not renewed after it "
            "(start a new period by moving share-state.json aside)"
        )
    ends = started + params["days"] * 86400
    users_state = state.get("participants", {})

    # What to build: participants with files whose fingerprint changed or whose archive is gone.
    plans = []
    for participant in participants:
        user = participant["user"]
        if not participant["files"]:
            continue
        old = users_state.get(user, {})
        token = old.get("token") or new_token()
        name = archive_name(params["workshop_id"], user)
        path = os.path.join(share_dir, "archives", name)
        encryption = password_source(params["encryption"], credentials, user)
        print_ = fingerprint(participant["files"], passwords[user], encryption)
        rebuild = old.get("fingerprint") != print_ or not os.path.isfile(path)
        plans.append(dict(participant=participant, old=old, token=token, name=name, path=path, fp=print_, rebuild=rebuild))

    built = []
    to_build = [plan for plan in plans if plan["rebuild"]]
    if to_build and not check_mode:

        def make(plan):
            return build_archive(
                plan["path"], plan["participant"]["files"], passwords[plan["participant"]["user"]], params["compress_level"]
            )

        with ThreadPoolExecutor(max_workers=max(1, params["jobs"])) as pool:
            results = list(pool.map(make, to_build))
        for plan, made in zip(to_build, results):
            plan["made"] = made
    built = [plan["participant"]["user"] for plan in to_build]

    client = None
    if delivery == "s3" and plans:
        client = (client_factory or _s3_client)(target)
    uploaded, linked = [], []
    new_state = {"started_at": started, "ends_at": ends, "delivery": delivery, "participants": {}}
    out = []
    for plan in plans:
        user = plan["participant"]["user"]
        old = plan["old"]
        made = plan.get("made") or ({"bytes": old.get("bytes"), "sha256": old.get("sha256")} if not plan["rebuild"] else {})
        entry = {
            "token": plan["token"],
            "fingerprint": plan["fp"],
            "archive": plan["name"],
            "bytes": made.get("bytes"),
            "sha256": made.get("sha256"),
        }
        changed_content = plan["rebuild"] or old.get("sha256") != entry["sha256"]
        if delivery == "folder":
            link = params["base_url"].rstrip("/") + f"/{plan['token']}/{plan['name']}" if params.get("base_url") else ""
            if check_mode and plan["rebuild"]:
                moved = True
            else:
                moved = folder_deliver(plan["path"], params["folder"], plan["token"], plan["name"], entry["sha256"], check_mode)
            entry.update(location=os.path.join(params["folder"], plan["token"], plan["name"]), link=link, link_expires=ends)
        else:
            key = s3_key(target, params["workshop_id"], plan["token"], plan["name"])
            if check_mode and plan["rebuild"]:
                moved = True
            else:
                moved = s3_deliver(client, target, plan["path"], key, entry["sha256"], check_mode)
            entry["location"] = f"s3://{target['bucket']}/{key}"
            seconds = max(0, min(MAX_LINK_SECONDS, params.get("link_lifetime") or MAX_LINK_SECONDS, ends - now))
            # A link is kept while it has an hour left; a refresh renews one past the half of what a new one would
            # get, so a second refresh soon after (cron and a hand run) issues, and mails, nothing again.
            left_needed = seconds / 2 if params.get("refresh") else 3600
            keep = not changed_content and not moved and old.get("link") and (old.get("link_expires") or 0) > now + left_needed
            if keep:
                entry.update(link=old["link"], link_expires=old["link_expires"], link_issued=old.get("link_issued"))
            else:
                if seconds <= 0:
                    raise WorkshopError(f"The share period ended at {utc_iso(ends)}: no link is issued after it")
                entry.update(
                    link=None if check_mode else presign(client, target, key, seconds),
                    link_expires=int(now + seconds),
                    link_issued=int(now),
                )
                linked.append(user)
        entry.setdefault("link_issued", old.get("link_issued") or int(now))
        if moved:
            uploaded.append(user)
        new_state["participants"][user] = entry
        out.append(
            {
                "user": user,
                "name": plan["participant"]["name"],
                "email": plan["participant"]["email"],
                "archive": plan["name"],
                "bytes": entry["bytes"],
                "sha256": entry["sha256"],
                "files": len(plan["participant"]["files"]),
                "file_list": [f[0] for f in plan["participant"]["files"]],
                "location": entry["location"],
                "link": entry["link"],
                "link_expires": utc_iso(entry["link_expires"]),
                "link_expires_text": human_time(entry["link_expires"]),
                "link_issued": utc_iso(entry["link_issued"]),
                "password": password_source(params["encryption"], credentials, user),
            }
        )
    absent = [p["user"] for p in participants if not p["files"]]
    no_email = [p["user"] for p in participants if p["files"] and not p["email"]]
    warnings = []
    generated = [
        plan["participant"]["user"]
        for plan in plans
        if password_source(params["encryption"], credentials, plan["participant"]["user"]) == "generated"
    ]
    if generated and params["encryption"] == "workshop":
        # The admin chose the workshop passwords: say whose are not there, and where the ones made instead are.
        source = params.get("credentials_file")
        source = (source + ("" if credentials else " (no such file, or no password in it)")) if source else "no credentials file"
        kept = "would be kept" if check_mode else "kept"
        warnings.append(
            f"No workshop password in {source} for {', '.join(generated)}: their archives are encrypted with "
            f"generated passwords, {kept} in {os.path.join(share_dir, PASSWORDS_NAME)} (owner only); send each their own"
        )
    left_out = [path for p in participants for path in p["left_out"]]
    if left_out:
        warnings.append(
            f"Left out of the archives, as links leading out of their participant's own folder: {', '.join(left_out[:10])}"
            + (f" and {len(left_out) - 10} more" if len(left_out) > 10 else "")
            + ". Only what lies in a participant's own folder is shared"
        )
    changed = bool(built or uploaded or linked) or (new_state != state and bool(plans))
    if changed and not check_mode:
        write_json(state_path, new_state)
    return {
        "changed": changed,
        "delivery": delivery,
        "period_started": utc_iso(started),
        "period_ends": utc_iso(ends),
        "period_ends_text": human_time(ends),
        "participants": out,
        "record": {
            p["user"]: {key: p[key] for key in ("archive", "bytes", "sha256", "files", "file_list", "location", "link_expires")}
            for p in out
        },
        "absent": absent,
        "no_email": no_email,
        "built": built,
        "uploaded": uploaded,
        "linked": linked,
        "roster": [{"user": p["user"], "name": p["name"], "email": p["email"], "files": len(p["files"])} for p in participants],
        "warnings": warnings,
    }


def _s3_client(target):
    return s3_client(target, use="share")
