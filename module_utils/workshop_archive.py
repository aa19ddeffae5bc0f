"""Off-host copies of the workshop's sealed backups: S3-compatible object storage, or a folder over SSH.

A sealed backup `<backup dir>/backup-<time>/` is copied file by file to
`<prefix>/<workshop id>/<backup name>/<file>` on the target, MANIFEST.json last, so a copy whose
MANIFEST.json is there is complete. Every file is checked against the manifest's sha256 on the way:
  - S3: large files go up as a multipart upload of fixed-size parts, in order; the object appears
    under its key only on completion, after the whole file's sha256 matched the manifest. A killed
    run leaves the upload open; the next run finds it (ListParts), keeps the parts whose MD5 matches
    the local part, and goes on. The manifest's sha256 is stored as object metadata (`sha256`) and
    small files carry ChecksumSHA256, which the server checks. After each upload the object is
    read back by HEAD: size, sha256 metadata and ETag (the MD5 the server computed) must match.
  - SSH: each file is appended to `.<name>.part` beside its final name (a killed run resumes at the
    part's size), hashed by the storage host (`sha256sum`), and hard-linked to its final name only
    when it matches the manifest (a link never replaces an existing file).
An object already at a key with the same checksum is skipped; a different one fails naming the key,
it is never overwritten. `verify_remote` reads objects back in full (all, or a sample) and
compares their sha256 with the manifest.
"""

import base64
import contextlib
import hashlib
import os
import random
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.workshop_backup import MANIFEST, PREFIX, read_manifest, sealed_backups, sha256_file
from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable
from ansible.module_utils.workshop_files import Sha256, fsync_dir, open_for_writing
from ansible.module_utils.workshop_record import read_record, save_record
from ansible.module_utils.workshop_s3 import s3_call_errors, s3_client, s3_error
from ansible.module_utils.workshop_time import utc_iso

CHUNK = 1 << 20
MIB = 1 << 20
# S3's smallest part (but the last) is 5 MiB.
MIN_PART = 5 * MIB
FETCH_PREFIX = ".partial-fetch-"


# --- what to copy ---------------------------------------------------------------------------


def backup_entries(folder):
    """Every file of a sealed backup as [(relpath, size, sha256)], sorted, MANIFEST.json last."""
    manifest = read_manifest(folder)
    entries = [(relpath, info["size"], info["sha256"]) for relpath, info in sorted(manifest.get("files", {}).items())]
    path = os.path.join(folder, MANIFEST)
    entries.append((MANIFEST, os.path.getsize(path), sha256_file(path)))
    return entries


def choose_backup(backup_dir, record_path, name=None):
    """The backup to copy: `name`, or the newest sealed one, which the run record must say verified."""
    sealed = sealed_backups(backup_dir)
    if name:
        if name not in sealed:
            raise WorkshopError(
                f"No sealed backup {name} in {backup_dir} (sealed: {', '.join(sealed) or 'none'}): name one of them",
                path=backup_dir,
            )
        return name
    if not sealed:
        raise WorkshopError(f"No sealed backup in {backup_dir} to archive: make one first (tag backup)", path=backup_dir)
    newest = sealed[-1]
    verify = (read_record(record_path).get("backup") or {}).get("verify") if record_path else None
    if not isinstance(verify, dict) or verify.get("backup") != newest or verify.get("ok") is not True:
        said = "nothing" if not isinstance(verify, dict) else f"{verify.get('backup')} ok={verify.get('ok')}"
        raise WorkshopError(
            f"The newest backup {newest} in {backup_dir} is not recorded as verified (run record {record_path} says "
            f"{said}): verify it first (tag verify); only a verified backup leaves the host",
            path=backup_dir,
            backup=newest,
        )
    return newest


def remote_key(prefix, workshop_id, backup, relpath=""):
    parts = [part.strip("/") for part in (prefix or "", workshop_id, backup, relpath)]
    return "/".join(part for part in parts if part)


def sample_of(entries, count, seed=None):
    """The manifest and `count` other files picked at random (all when count covers them)."""
    others = [entry for entry in entries if entry[0] != MANIFEST]
    if count >= len(others):
        return list(entries)
    picked = random.Random(seed).sample(others, count)
    return sorted(picked) + [entry for entry in entries if entry[0] == MANIFEST]


class Progress:
    """Bytes and files done, and the rate, across the slices of one run (`resume` carries it)."""

    def __init__(self, entries, resume=None, owner=None):
        # A resume of another target or backup (a variable left from an earlier loop) is ignored.
        resume = resume if resume and resume.get("owner") == owner else {}
        self.owner = owner
        self.files = len(entries)
        self.bytes = sum(entry[1] for entry in entries)
        self.started = resume.get("started") or time.time()
        self.sent = resume.get("sent", 0)
        self.done = set(resume.get("done") or [])
        # {remote key: {part number: MD5}} of the parts this run's slices sent of an upload still open.
        self.parts = resume.get("parts") or {}
        self.sizes = {entry[0]: entry[1] for entry in entries}
        self.partial = 0
        self.sent_here = 0  # by this slice

    def finish(self, relpath):
        self.done.add(relpath)
        self.partial = 0

    def add(self, count):
        self.sent += count
        self.partial += count
        self.sent_here += count

    def out_of_time(self, deadline):
        """Whether this slice stops here: past its deadline, once it has sent something. Its start can
        outlast slice_seconds (a resumed upload reads again the parts already sent, on a busy host):
        were it to stop before its first part, so would every slice, and the copy would never end."""
        return deadline is not None and self.sent_here > 0 and time.time() >= deadline

    def sent_part(self, key, number, md5):
        self.parts.setdefault(key, {})[str(number)] = md5

    def parts_sent(self, key):
        return {int(number): md5 for number, md5 in (self.parts.get(key) or {}).items()}

    def forget_parts(self, key):
        self.parts.pop(key, None)

    def state(self):
        return {
            "owner": self.owner,
            "started": self.started,
            "sent": self.sent,
            "done": sorted(self.done),
            "parts": self.parts,
        }

    def report(self):
        elapsed = max(time.time() - self.started, 1e-6)
        bytes_done = sum(self.sizes.get(relpath, 0) for relpath in self.done) + self.partial
        rate = self.sent / elapsed
        return {
            "files_done": len(self.done),
            "files": self.files,
            "bytes_done": bytes_done,
            "bytes": self.bytes,
            "bytes_sent": self.sent,
            "seconds": round(elapsed, 3),
            "rate_mib_s": round(rate / MIB, 2),
        }

    def summary(self):
        report = self.report()
        return (
            f"{report['files_done']}/{report['files']} files, {report['bytes_done'] / MIB:.1f}/{report['bytes'] / MIB:.1f} MiB, "
            f"{report['rate_mib_s']} MiB/s"
        )


def _digests_of(path, part_size):
    """(sha256, MD5 of the whole file, MD5 of each part) of a local file."""
    digest = Sha256()
    whole = hashlib.md5()  # the ETag S3 computes, not a security checksum
    parts = []
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(part_size), b""):
            digest.update(block)
            whole.update(block)
            parts.append(hashlib.md5(block).digest())
    return digest.hexdigest(), whole.hexdigest(), parts


def etags_of(whole_md5, part_md5s):
    """The ETags an S3 server may report for an object: MD5 of the content, or of the parts' MD5s plus '-N'."""
    found = {whole_md5}
    if len(part_md5s) > 1:
        found.add(hashlib.md5(b"".join(part_md5s)).hexdigest() + f"-{len(part_md5s)}")
    return found


# --- S3 ----------------------------------------------------------------------------------------


class S3Target:
    kind = "s3"

    def close(self):
        pass

    def __init__(self, target, client, part_size=64 * MIB, threshold=64 * MIB, concurrency=3, use="archive"):
        self.target = target
        self.use = use
        self.concurrency = max(concurrency, 1)
        self.client = client
        self.errors = s3_call_errors()
        self.bucket = target["bucket"]
        self.prefix = target.get("prefix") or ""
        self.part_size = max(part_size, MIN_PART)
        self.threshold = max(threshold, MIN_PART)

    def where(self, workshop_id, backup):
        return f"s3://{self.bucket}/{remote_key(self.prefix, workshop_id, backup)}/"

    def key(self, workshop_id, backup, relpath):
        return remote_key(self.prefix, workshop_id, backup, relpath)

    def _call(self, action, key, method, **kwargs):
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except self.errors as exc:
            raise s3_error(self.target, action, key, exc, use=self.use) from None

    def stat(self, key):
        """{size, sha256, etag} of the object at `key`, None when there is none."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except self.errors as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise s3_error(self.target, "reading", key, exc, use=self.use) from None
        metadata = {name.lower(): value for name, value in (head.get("Metadata") or {}).items()}
        return {
            "size": head.get("ContentLength"),
            "sha256": metadata.get("sha256"),
            "etag": (head.get("ETag") or "").strip('"'),
            "checksum_sha256": head.get("ChecksumSHA256"),
        }

    def same(self, key, found, local_path, size, sha256):
        """Whether the object `found` at `key` holds the local file's content."""
        if found["size"] != size:
            return False
        if found.get("sha256"):
            return found["sha256"] == sha256
        if _single_part_sha256(found.get("checksum_sha256")):
            return _single_part_sha256(found["checksum_sha256"]) == sha256
        # A server that lost the metadata: its ETag is the MD5 it computed of what it holds.
        _sha256, whole, parts = _digests_of(local_path, self.part_size)
        return found["etag"] in etags_of(whole, parts)

    def _extra(self, sha256):
        extra = {"Metadata": {"sha256": sha256}}
        if self.target.get("storage_class"):
            extra["StorageClass"] = self.target["storage_class"]
        return extra

    def upload(self, key, local_path, size, sha256, progress, deadline):
        """Copy one file to `key`; False when the deadline stopped it between parts (it resumes)."""
        if size < self.threshold:
            with open(local_path, "rb") as stream:
                data = stream.read()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise _local_differs(local_path, key)
            self._call(
                "uploading",
                key,
                "put_object",
                Key=key,
                Body=data,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                **self._extra(sha256),
            )
            progress.add(size)
            return {hashlib.md5(data).hexdigest()}
        return self._upload_multipart(key, local_path, size, sha256, progress, deadline)

    def open_upload(self, key):
        """(upload id, {part number: (etag, size)}) of an unfinished upload of `key`, None when there is none.

        Older unfinished uploads of the same key (earlier killed runs) are aborted.
        """
        try:
            listed = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        except self.errors as exc:
            # Some servers (rclone) answer NoSuchUpload when the bucket has no upload open.
            if getattr(exc, "response", {}).get("Error", {}).get("Code") != "NoSuchUpload":
                raise s3_error(self.target, "listing uploads of", key, exc, use=self.use) from None
            listed = {}
        uploads = sorted((u for u in listed.get("Uploads") or [] if u["Key"] == key), key=lambda u: u["Initiated"])
        for stale in uploads[:-1]:
            self._call("aborting an old upload of", key, "abort_multipart_upload", Key=key, UploadId=stale["UploadId"])
        if not uploads:
            return None
        upload_id = uploads[-1]["UploadId"]
        parts = {}
        marker = 0
        while True:
            page = self._call("listing parts of", key, "list_parts", Key=key, UploadId=upload_id, PartNumberMarker=marker)
            for part in page.get("Parts") or []:
                parts[part["PartNumber"]] = (part["ETag"].strip('"'), part["Size"])
            if not page.get("IsTruncated"):
                break
            marker = page["NextPartNumberMarker"]
        return upload_id, parts

    def _upload_multipart(self, key, local_path, size, sha256, progress, deadline):
        found = self.open_upload(key)
        upload_id, done = found if found else (None, {})
        # The parts this run's earlier slices sent, which the server holds with their MD5, are not read
        # again: every slice would read the whole start of the file (quadratic in its size). The slice
        # that completes the upload reads the whole file once to check it against the manifest.
        known = progress.parts_sent(key)
        skipped = 0
        while done.get(skipped + 1) == (known.get(skipped + 1), self.part_size):
            skipped += 1
        digest = hashlib.sha256()
        whole = hashlib.md5()
        md5s = [bytes.fromhex(known[number]) for number in range(1, skipped + 1)]
        etags = [known[number] for number in range(1, skipped + 1)]
        # Up to `concurrency` parts in flight (sent in part order): reading and hashing the next part
        # overlaps sending the previous ones. Memory: concurrency x part size.
        inflight = []
        stopped = False
        with open(local_path, "rb") as stream, ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            try:
                stream.seek(skipped * self.part_size)
                number = skipped
                for block in iter(lambda: stream.read(self.part_size), b""):
                    number += 1
                    digest.update(block)
                    whole.update(block)
                    part_md5 = hashlib.md5(block).hexdigest()
                    md5s.append(bytes.fromhex(part_md5))
                    if done.get(number) == (part_md5, len(block)):
                        etags.append(part_md5)
                        continue
                    if number in done:
                        # A part of other content (the file changed, or another part size): start again.
                        self._settle(key, inflight, progress, 0)
                        self._call("aborting", key, "abort_multipart_upload", Key=key, UploadId=upload_id)
                        return self._fresh_multipart(key, local_path, size, sha256, progress, deadline)
                    if progress.out_of_time(deadline):
                        stopped = True
                        break
                    if upload_id is None:
                        upload_id = self._call(
                            "starting the upload of", key, "create_multipart_upload", Key=key, **self._extra(sha256)
                        )["UploadId"]
                    self._settle(key, inflight, progress, self.concurrency - 1)
                    future = pool.submit(
                        self.client.upload_part, Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=block
                    )
                    inflight.append((future, number, part_md5, len(block)))
                    etags.append(part_md5)
            finally:
                self._settle(key, inflight, progress, 0)
        if stopped:
            return False
        digest_hex, whole_hex = digest.hexdigest(), whole.hexdigest()
        if skipped:
            digest_hex, whole_hex, read_md5s = _digests_of(local_path, self.part_size)
            if read_md5s != md5s:
                digest_hex = None  # the parts sent are not the file as it is now
        if digest_hex != sha256:
            if upload_id:
                self._call("aborting", key, "abort_multipart_upload", Key=key, UploadId=upload_id)
            progress.forget_parts(key)
            raise _local_differs(local_path, key)
        self._call(
            "completing the upload of",
            key,
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": f'"{etag}"'} for n, etag in enumerate(etags)]},
        )
        progress.forget_parts(key)
        return etags_of(whole_hex, md5s)

    def _settle(self, key, inflight, progress, keep):
        """Wait for the oldest parts in flight until at most `keep` remain; each must come back with its MD5."""
        while len(inflight) > keep:
            future, number, part_md5, length = inflight.pop(0)
            try:
                answer = future.result()
            except self.errors as exc:
                raise s3_error(self.target, f"uploading part {number} of", key, exc, use=self.use) from None
            if answer["ETag"].strip('"') != part_md5:
                raise WorkshopError(
                    f"Archive target '{self.target['name']}': part {number} of s3://{self.bucket}/{key} arrived damaged "
                    f"(ETag {answer['ETag']}, MD5 sent {part_md5}); run again to resend it",
                    key=key,
                )
            progress.sent_part(key, number, part_md5)
            progress.add(length)

    def _fresh_multipart(self, key, local_path, size, sha256, progress, deadline):
        progress.forget_parts(key)
        found = self.open_upload(key)
        if found:
            self._call("aborting", key, "abort_multipart_upload", Key=key, UploadId=found[0])
        return self._upload_multipart(key, local_path, size, sha256, progress, deadline)

    def check_uploaded(self, key, size, sha256, etags):
        """After an upload: the server's size, sha256 metadata and ETag must be the file's; raises otherwise."""
        found = self.stat(key)
        problems = []
        if found is None:
            problems.append("not there after the upload")
        else:
            if found["size"] != size:
                problems.append(f"size {found['size']}, manifest {size}")
            if found.get("sha256") and found["sha256"] != sha256:
                problems.append(f"sha256 metadata {found['sha256']}, manifest {sha256}")
            if found["etag"] not in etags:
                problems.append(f"ETag {found['etag']}, expected {' or '.join(sorted(etags))}")
        if problems:
            raise WorkshopError(
                f"Archive target '{self.target['name']}': s3://{self.bucket}/{key} does not match the manifest after the "
                f"upload ({'; '.join(problems)}); it was not recorded as archived. Run again",
                key=key,
            )

    def read_sha256(self, key, dest=None):
        """sha256 of the object at `key`, read in full (written to `dest` as it is read, when given)."""
        body = self._call("reading", key, "get_object", Key=key)["Body"]
        digest = Sha256()
        # A fetched file is owner-only, as the backup's own: the configuration holds the workshop's secrets.
        with open_for_writing(dest) if dest else open(os.devnull, "wb") as out:
            try:
                for block in iter(lambda: body.read(CHUNK), b""):
                    digest.update(block)
                    if dest:
                        out.write(block)
            except self.errors as exc:
                raise s3_error(self.target, "reading", key, exc, use=self.use) from None
            if dest:
                out.flush()
                os.fsync(out.fileno())
        return digest.hexdigest()

    def folders(self, base):
        """Names of the "folders" (common prefixes) right under the key prefix `base` ("" or ending in "/")."""
        names = []
        token = None
        while True:
            kwargs = {"Prefix": base, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("listing", base, "list_objects_v2", **kwargs)
            names += [common["Prefix"][len(base) :].strip("/") for common in page.get("CommonPrefixes") or []]
            if not page.get("IsTruncated"):
                return names
            token = page["NextContinuationToken"]

    def backups(self, workshop_id):
        """Names of the complete backups (MANIFEST.json present) of the workshop on the target, oldest first."""
        names = [name for name in self.folders(remote_key(self.prefix, workshop_id, "") + "/") if name.startswith(PREFIX)]
        return sorted(name for name in names if self.stat(remote_key(self.prefix, workshop_id, name, MANIFEST)))


def _local_differs(local_path, where):
    return WorkshopError(
        f"{local_path} no longer matches its backup's manifest (sha256): nothing of it was archived to {where}. "
        f"Verify the backup (tag verify) and make a new one (tag backup)",
        path=local_path,
    )


# --- SSH ---------------------------------------------------------------------------------------


def _ssh_config_path(path, tokens=""):
    """`path` as one token of an ssh -o option: quoted, since ssh splits the value at spaces, with % doubled,
    since ssh expands %-tokens in these paths (a leading ~ is still expanded); `tokens` (such as "/%C") are
    appended as they are, for ssh to expand."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + tokens + '"'


# ssh's own words for a host it cannot reach or lost (a name that does not resolve is a typo to mend, not this).
SSH_UNREACHED = re.compile(
    r"connect to host|Connection (refused|timed out|reset|closed)|No route to host|Network is unreachable|"
    r"Operation timed out|Broken pipe|Timeout, server .* not responding"
)


class SshTarget:
    """A folder on another machine, reached with OpenSSH's client and a POSIX shell with sha256sum there."""

    kind = "ssh"

    def __init__(self, target, known_hosts=None, timeout=30, check_mode=False):
        if not target.get("host") or not target.get("path"):
            raise WorkshopError(f"Archive target '{target['name']}' (ssh) needs host and path in archive_targets")
        self.target = target
        self.timeout = timeout
        self.root = target["path"].rstrip("/") or "/"
        user = target.get("user")
        self.destination = f"{user}@{target['host']}" if user else target["host"]
        self.options = [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ServerAliveInterval=15",
            "-p",
            str(target.get("port") or 22),
        ]
        # One connection for every command of this call (a handshake per file would cost more than small files).
        self.control_dir = tempfile.mkdtemp(prefix="archive-ssh-")
        control_path = _ssh_config_path(self.control_dir, tokens="/%C")
        self.options += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}", "-o", "ControlPersist=120"]
        if check_mode:
            # A first connection accepts the host's key (accept-new) into the first file named: in check
            # mode a file of this call's own, so nothing is written; a key already known is still checked.
            known = [known_hosts] if known_hosts else self._configured_known_hosts()
            files = [os.path.join(self.control_dir, "known_hosts"), *known]
            self.options += ["-o", "UserKnownHostsFile=" + " ".join(map(_ssh_config_path, files))]
        elif known_hosts:
            self.options += ["-o", f"UserKnownHostsFile={_ssh_config_path(known_hosts)}"]
        if target.get("key_file"):
            self.options += ["-i", target["key_file"], "-o", "IdentitiesOnly=yes"]

    def _configured_known_hosts(self):
        """The known_hosts files ssh reads for this destination (`ssh -G`: the admin's ssh_config or its defaults)."""
        completed = subprocess.run(["ssh", "-G", *self.options, self.destination], capture_output=True, check=False)
        for line in completed.stdout.decode(errors="replace").splitlines():
            key, _space, value = line.partition(" ")
            if key == "userknownhostsfile" and value.split():
                return value.split()
        return ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]

    def close(self):
        subprocess.run(["ssh", *self.options, "-O", "exit", self.destination], capture_output=True, check=False)
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def where(self, workshop_id, backup):
        port = self.target.get("port") or 22
        return f"ssh://{self.destination}:{port}{self.root}/{workshop_id}/{backup}/"

    def key(self, workshop_id, backup, relpath):
        return f"{self.root}/{workshop_id}/{backup}/{relpath}"

    def _command(self, script, *args):
        return [
            "ssh",
            *self.options,
            self.destination,
            " ".join(["sh", "-c", shlex.quote(script), "sh", *map(shlex.quote, args)]),
        ]

    def run(self, script, *args, what="", stdin=None, check=True):
        completed = subprocess.run(self._command(script, *args), input=stdin, capture_output=True, check=False)
        if check and completed.returncode != 0:
            raise self.error(what, completed.returncode, completed.stderr)
        return completed

    def error(self, what, code, stderr):
        said = stderr.decode(errors="replace").strip().splitlines()
        # ssh's own failure to reach the host (exit 255), not a refused key or login, nor the command's failure;
        # a connection shared by the call's commands that drops under one ends it with 255 and no word.
        unreached = code == 255 and (not said or any(SSH_UNREACHED.search(line) for line in said))
        return (WorkshopUnreachable if unreached else WorkshopError)(
            f"Archive target '{self.target['name']}' ({self.destination}): {what} failed (exit {code}): "
            f"{said[-1].rstrip('.') if said else 'no message'}. Check host, port, user, key_file and that the storage host has "
            f"sh and sha256sum",
            target=self.target["name"],
        )

    def survey(self, folder, relpaths, hashed):
        """{relpath: {size, sha256 or None, part}} of the files of `folder` (part: size of its .part file)."""
        script = (
            'cd "$1" 2>/dev/null || exit 0; shift; hash=""; for f in "$@"; do '
            'if [ "$f" = "--" ]; then hash=1; continue; fi; '
            'p="$(dirname "$f")/.$(basename "$f").part"; '
            'if [ -f "$p" ]; then printf "P %s %s\\n" "$(wc -c < "$p" | tr -d " ")" "$f"; fi; '
            'if [ -f "$f" ]; then h=-; if [ -n "$hash" ]; then h=$(sha256sum < "$f" | cut -d" " -f1); fi; '
            'printf "F %s %s %s\\n" "$(wc -c < "$f" | tr -d " ")" "$h" "$f"; fi; done'
        )
        plain = [relpath for relpath in relpaths if relpath not in hashed]
        to_hash = [relpath for relpath in relpaths if relpath in hashed]
        completed = self.run(script, folder, *plain, "--", *to_hash, what=f"reading {folder}")
        found = {}
        for line in completed.stdout.decode(errors="replace").splitlines():
            # A file the host cannot read comes back without a size (or a hash): None, not a crash.
            if line.startswith("P "):
                _dummy, size, relpath = line.split(" ", 2)
                found.setdefault(relpath, {"size": None, "sha256": None, "part": 0})["part"] = int(size) if size.isdigit() else 0
            elif line.startswith("F "):
                _dummy, size, digest, relpath = line.split(" ", 3)
                entry = found.setdefault(relpath, {"size": None, "sha256": None, "part": 0})
                entry["size"] = int(size) if size.isdigit() else None
                entry["sha256"] = digest if digest not in ("-", "") else None
        return found

    def upload(self, folder, relpath, local_path, size, sha256, offset, progress, deadline):
        """Append the file from `offset` to its .part, then have the host hash it and link it in place.

        Returns False when the deadline stopped it (the .part stays for the next run).
        """
        part = _part_name(relpath)
        if offset > size:
            self.run('rm -f "$1"', f"{folder}/{part}", what=f"removing {folder}/{part}")
            offset = 0
        if offset < size:
            # umask 077: the copy holds the workshop's .env and the participants' work; only the storage user reads it.
            command = self._command('umask 077 && mkdir -p "$(dirname "$1")" && cat >> "$1"', f"{folder}/{part}")
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            stopped = False
            try:
                with open(local_path, "rb") as stream:
                    stream.seek(offset)
                    for block in iter(lambda: stream.read(CHUNK), b""):
                        process.stdin.write(block)
                        progress.add(len(block))
                        if progress.out_of_time(deadline):
                            stopped = True
                            break
                process.stdin.close()
            except BrokenPipeError:
                pass
            stderr = process.stderr.read()
            code = process.wait()
            if code != 0:
                raise self.error(f"writing {folder}/{part}", code, stderr)
            if stopped:
                return False
        script = (
            'p="$1/$2"; f="$1/$3"; h=$(sha256sum < "$p" | cut -d" " -f1); '
            'if [ "$h" != "$4" ]; then rm -f "$p"; echo "sha256 $h" >&2; exit 3; fi; '
            'ln "$p" "$f" || exit 4; rm -f "$p"; sync "$f" 2>/dev/null || true'
        )
        completed = self.run(script, folder, part, relpath, sha256, check=False)
        if completed.returncode == 3:
            raise WorkshopError(
                f"Archive target '{self.target['name']}': {folder}/{relpath} arrived as sha256 "
                f"{completed.stderr.decode().split()[-1]}, not the manifest's {sha256} (the local file changed, or the "
                f"transfer was damaged); its part was removed. Verify the backup (tag verify) and run again",
                key=f"{folder}/{relpath}",
            )
        if completed.returncode == 4:
            raise WorkshopError(
                f"Archive target '{self.target['name']}': {folder}/{relpath} appeared while it was copied: it is never "
                f"overwritten. Look at it, then run again",
                key=f"{folder}/{relpath}",
            )
        if completed.returncode != 0:
            raise self.error(f"sealing {folder}/{relpath}", completed.returncode, completed.stderr)
        return True

    def read_sha256(self, path, dest=None):
        """sha256 of a file on the host; read in full by the host, or fetched into `dest` and hashed here."""
        if dest is None:
            completed = self.run('sha256sum < "$1" | cut -d" " -f1', path, what=f"reading {path}")
            return completed.stdout.decode().strip()
        with open_for_writing(dest) as out:  # owner-only, as the backup's own files
            process = subprocess.Popen(self._command('cat "$1"', path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            digest = Sha256()
            for block in iter(lambda: process.stdout.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
            stderr = process.stderr.read()
            if process.wait() != 0:
                raise self.error(f"reading {path}", process.returncode, stderr)
        return digest.hexdigest()

    def backups(self, workshop_id):
        script = 'cd "$1" 2>/dev/null || exit 0; for d in backup-*; do [ -f "$d/MANIFEST.json" ] && echo "$d"; done; true'
        completed = self.run(script, f"{self.root}/{workshop_id}", what=f"listing {self.root}/{workshop_id}")
        return sorted(line for line in completed.stdout.decode(errors="replace").splitlines() if line.startswith(PREFIX))


def _part_name(relpath):
    head, tail = os.path.split(relpath)
    return os.path.join(head, f".{tail}.part")


def make_target(target, known_hosts=None, part_size=64 * MIB, threshold=64 * MIB, concurrency=3, use="archive", check_mode=False):
    """The store of an archive target; `use`: what the target is for, as its messages name it (workshop_s3.USES);
    in `check_mode` an SSH target stores no new host key."""
    if target["type"] == "s3":
        client = s3_client(target, use=use)
        return S3Target(target, client, part_size=part_size, threshold=threshold, concurrency=concurrency, use=use)
    return SshTarget(target, known_hosts=known_hosts, check_mode=check_mode)


@contextlib.contextmanager
def opened_targets(targets, known_hosts=None, use="archive", check_mode=False):
    """The stores of `targets` (make_target) for a `with`: all closed on leaving, and those already made
    when a later one fails to open."""
    stores = []
    try:
        for target in targets:
            stores.append(make_target(target, known_hosts=known_hosts, use=use, check_mode=check_mode))
        yield stores
    finally:
        for store in stores:
            store.close()


# --- copy, verify, fetch -----------------------------------------------------------------------


def copy_backup(store, folder, workshop_id, backup, progress, deadline=None, check_mode=False):
    """Copy a sealed backup to a target; returns {uploaded, skipped, done}. Raises on a conflict or damage.

    Files already confirmed by an earlier slice of this run (progress.done) are not looked at again.
    MANIFEST.json goes last, so a copy with a manifest is a complete copy.
    """
    entries = backup_entries(folder)
    uploaded, skipped, pending = [], [], []
    if store.kind == "ssh":
        base = store.key(workshop_id, backup, "").rstrip("/")
        todo = [entry[0] for entry in entries if entry[0] not in progress.done]
        survey = store.survey(base, todo, hashed=set(todo))
    for relpath, size, sha256 in entries:
        if relpath in progress.done:
            continue
        local_path = os.path.join(folder, relpath)
        key = store.key(workshop_id, backup, relpath)
        if store.kind == "s3":
            found = store.stat(key)
            present = found is not None
            same = present and store.same(key, found, local_path, size, sha256)
            offset = 0
        else:
            found = survey.get(relpath) or {}
            present = found.get("size") is not None
            same = present and found["size"] == size and found["sha256"] == sha256
            offset = found.get("part") or 0
        if present and not same:
            raise WorkshopError(
                f"Archive target '{store.target['name']}' already holds {store.where(workshop_id, backup)}{relpath} with other "
                f"content than the backup's manifest: it is never overwritten. Either the backup on this host changed "
                f"since it was copied (verify it: --tags verify, and keep the copy) or the copy was altered on the target "
                f"(then move it aside there, or archive under another prefix) before running again. Nothing else was changed",
                key=key,
            )
        if same:
            skipped.append(relpath)
            progress.finish(relpath)
            continue
        if relpath == MANIFEST and pending:
            break
        if check_mode:
            pending.append(relpath)
            continue
        if progress.out_of_time(deadline):
            pending.append(relpath)
            break
        if store.kind == "s3":
            etags = store.upload(key, local_path, size, sha256, progress, deadline)
            if etags is False:
                pending.append(relpath)
                break
            store.check_uploaded(key, size, sha256, etags)
        elif not store.upload(base, relpath, local_path, size, sha256, offset, progress, deadline):
            pending.append(relpath)
            break
        uploaded.append(relpath)
        progress.finish(relpath)
    if check_mode:
        # What would be uploaded: every file not there yet, the manifest included.
        pending = [entry[0] for entry in entries if entry[0] not in progress.done]
    return {
        "uploaded": uploaded,
        "skipped": skipped,
        "pending": pending,
        "done": not pending and len(progress.done) == len(entries),
    }


def _single_part_sha256(checksum):
    """The hex sha256 of an object's ChecksumSHA256 (base64), None when unset or a multipart one ("...-N")."""
    if not checksum or "-" in checksum:
        return None
    return base64.b64decode(checksum).hex()


def check_present(store, folder, workshop_id, backup, entries=None, content=False):
    """Is every file of the backup in the copy, with its size (and, on S3, the sha256 recorded with the
    object)? Returns failures [{file, reason}].

    `entries`: the files to look at ([(relpath, size, sha256)], default every file of the backup).
    `content`: vouch for the content too, without downloading it: over SSH the storage host hashes each
    file; on S3 the server's checksum of a single-part upload, else the sha256 kept with the object, else
    its ETag against the local file's MD5s (an object replaced without the metadata is not taken on its size)."""
    entries = backup_entries(folder) if entries is None else entries
    failures = []
    if store.kind == "s3":
        found = {relpath: store.stat(store.key(workshop_id, backup, relpath)) for relpath, _size, _sha256 in entries}
    else:
        copy = store.key(workshop_id, backup, "").rstrip("/")
        relpaths = [relpath for relpath, _size, _sha256 in entries]
        found = store.survey(copy, relpaths, set(relpaths) if content else ())
    for relpath, size, sha256 in entries:
        there = found.get(relpath) or {}
        key = store.key(workshop_id, backup, relpath)
        if there.get("size") is None:
            where = "cannot be read on the target" if found.get(relpath) else "missing on the target"
            failures.append({"file": relpath, "reason": f"{where} ({key})"})
        elif there["size"] != size:
            failures.append({"file": relpath, "reason": f"size {there['size']} on the target, {size} in the manifest"})
        else:
            # The server's own checksum of a single-part upload first, else the manifest's sha256 kept with the object.
            got = _single_part_sha256(there.get("checksum_sha256")) or there.get("sha256")
            if got and got != sha256:
                failures.append({"file": relpath, "reason": f"sha256 {got} on the target, {sha256} in the manifest"})
            elif content and not got:
                why = _unvouched(store, key, there, os.path.join(folder, relpath), size, sha256)
                if why:
                    failures.append({"file": relpath, "reason": why})
    return failures


def _unvouched(store, key, found, local_path, size, sha256):
    """Why the content of a file that has no hash on the target cannot be vouched for; None when it can."""
    if store.kind != "s3":
        return "it could not be hashed on the storage host"
    try:
        if store.same(key, found, local_path, size, sha256):
            return None
    except OSError as exc:
        return f"no sha256 kept with it, and the backup's own file cannot be read to compare its ETag ({exc.strerror})"
    return f"no sha256 kept with it, and its ETag {found['etag']} is not the MD5 of the backup's file"


def verify_copy(store, folder, workshop_id, backup, mode="all", sample=3, seed=None):
    """Read the copy back from the target and compare each file's sha256 with the local manifest.

    Returns (checked relpaths, failures [{file, reason}]).
    """
    entries = backup_entries(folder)
    chosen = entries if mode == "all" else sample_of(entries, sample, seed)
    failures = check_present(store, folder, workshop_id, backup, chosen)
    failed = {failure["file"] for failure in failures}
    for relpath, _size, sha256 in chosen:
        if relpath in failed:
            continue
        key = store.key(workshop_id, backup, relpath)
        if store.kind == "s3":
            got = store.read_sha256(key)
        else:
            completed = store.run('[ -f "$1" ] || exit 5; sha256sum < "$1" | cut -d" " -f1', key, check=False)
            if completed.returncode == 5:
                failures.append({"file": relpath, "reason": f"missing on the target ({key})"})
                continue
            if completed.returncode != 0:
                raise store.error(f"reading {key}", completed.returncode, completed.stderr)
            got = completed.stdout.decode().strip()
        if got != sha256:
            failures.append({"file": relpath, "reason": f"sha256 {got} on the target, {sha256} in the manifest"})
    return [entry[0] for entry in chosen], failures


def fetch_backup(store, workshop_id, backup, dest, check_mode=False):
    """Download a backup (named, or the newest complete one) into `dest`/<backup>/, each file checked against its MANIFEST.

    Written into `dest`/.partial-fetch-<backup>/ and renamed when complete; files already fetched
    there (a killed run) are kept when they match. A folder already at the final name is checked,
    never overwritten. Returns {path, backup, files, bytes, changed}.
    """
    names = store.backups(workshop_id)
    if backup is None:
        if not names:
            raise WorkshopError(
                f"Archive target '{store.target['name']}' holds no complete backup of workshop {workshop_id} "
                f"({store.where(workshop_id, '')}): archive one first (tag archive)",
                target=store.target["name"],
            )
        backup = names[-1]
    elif backup not in names:
        raise WorkshopError(
            f"Archive target '{store.target['name']}' holds no complete backup {backup} of workshop {workshop_id} "
            f"(it has: {', '.join(names) or 'none'})",
            target=store.target["name"],
        )
    final = os.path.join(dest, backup)
    if os.path.exists(final):
        entries = backup_entries(final)
        bad = [
            relpath for relpath, size, sha256 in entries[:-1] if not _local_matches(os.path.join(final, relpath), size, sha256)
        ]
        if bad:
            raise WorkshopError(
                f"{final} exists and differs from its manifest ({', '.join(bad[:5])}): it is never overwritten. "
                f"Move it aside, then fetch again",
                path=final,
            )
        return {"changed": False, "path": final, "backup": backup, "files": len(entries), "bytes": sum(e[1] for e in entries)}
    partial = os.path.join(dest, FETCH_PREFIX + backup)
    manifest_key = store.key(workshop_id, backup, MANIFEST)
    if check_mode:
        return {"changed": True, "path": final, "backup": backup, "files": None, "bytes": None}
    os.makedirs(partial, mode=0o700, exist_ok=True)
    got = store.read_sha256(manifest_key, dest=os.path.join(partial, MANIFEST))
    try:
        entries = backup_entries(partial)
    except WorkshopError as exc:
        raise WorkshopError(
            f"The manifest {store.where(workshop_id, backup)}{MANIFEST} on archive target '{store.target['name']}' cannot "
            f"be read ({exc.msg}): this copy is damaged; fetch from another target",
            key=manifest_key,
            file=MANIFEST,
            backup=backup,
        ) from None
    if entries[-1][2] != got:
        raise WorkshopError(
            f"The manifest {manifest_key} changed while it was read: fetch again", key=manifest_key, backup=backup
        )
    for relpath, size, sha256 in entries[:-1]:
        path = os.path.join(partial, relpath)
        if _local_matches(path, size, sha256):
            continue
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        temporary = path + ".part"
        try:
            digest = store.read_sha256(store.key(workshop_id, backup, relpath), dest=temporary)
        except WorkshopError as exc:
            exc.context.update(file=relpath, backup=backup)  # the restore test records which file failed
            raise
        if digest != sha256 or os.path.getsize(temporary) != size:
            os.remove(temporary)
            raise WorkshopError(
                f"{store.where(workshop_id, backup)}{relpath} on archive target '{store.target['name']}' does not match its "
                f"manifest (sha256 {digest}, manifest {sha256}): this copy is damaged; fetch from another target",
                key=store.key(workshop_id, backup, relpath),
                file=relpath,
                backup=backup,
            )
        os.rename(temporary, path)
    for root, _dummy, _dummy in os.walk(partial):
        fsync_dir(root)
    os.rename(partial, final)
    fsync_dir(dest)
    return {"changed": True, "path": final, "backup": backup, "files": len(entries), "bytes": sum(e[1] for e in entries)}


def _local_matches(path, size, sha256):
    return os.path.isfile(path) and os.path.getsize(path) == size and sha256_file(path) == sha256


# --- the run record ----------------------------------------------------------------------------


def record_archive(path, name, entry, now=None):
    """Set archive.targets.<name> to `entry` (+ at, verified_at); an unchanged entry keeps its times. Returns whether it wrote."""
    record = read_record(path)
    section = dict(record.get("archive") or {})
    targets = dict(section.get("targets") or {})
    before = targets.get(name) or {}
    moment = utc_iso(time.time() if now is None else now)
    merged = dict(before, **entry)
    times = ("at", "verified_at")
    if before and {k: v for k, v in before.items() if k not in times} == {k: v for k, v in merged.items() if k not in times}:
        return False
    if entry.get("backup") != before.get("backup") or "at" not in before or entry.get("files") != before.get("files"):
        merged["at"] = moment
    if "verified" in entry:
        merged["verified_at"] = moment
    targets[name] = merged
    section["targets"] = targets
    save_record(path, dict(record, archive=section))
    return True
