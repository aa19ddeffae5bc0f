# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Next-workshop readiness: the checklist's "Verify all backups are still accessible" and "Check
certificates won't expire before next workshop", plus what the next workshop needs to start (disk,
images, empty queues, the GPU host), each as one line {check, item, ok, evidence or reason, figures}.

`ok` is True, False, or None for a neutral line (a part that is not configured). `figures` holds
the measures that drift while nothing changes (free bytes, days left, a latency): shown, but left
out of the outcome that decides whether the files and the record are rewritten.

Certificates are read with the `openssl` command (`openssl x509`), through a `run(args, data)`
callable (the module's run_command): the workshop host's Python has no `cryptography` library,
and `ssl` alone cannot decode a certificate file.
"""

import json
import math
import os
import re
import shutil
import socket
import ssl
import tarfile
from datetime import date, datetime, timedelta, timezone

from ansible.module_utils.workshop_backup import MANIFEST, read_manifest, sealed_backups
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_files import human_bytes, tree_usage
from ansible.module_utils.workshop_record import failures_text, fetch_failed
from ansible.module_utils.workshop_time import parse_time

# The lines, in the order they are shown.
CHECKS = ("backup", "restore_test", "certificate", "disk", "images", "queues", "gpu_host")
TITLES = {
    "backup": "Newest backup readable",
    "restore_test": "Restore test passed recently",
    "certificate": "TLS certificate valid",
    "disk": "Disk space for the next workshop",
    "images": "Platform images present",
    "queues": "Queues empty",
    "gpu_host": "GPU host reachable",
}
# Bytes read at each end of a backup file: the quick read (the backup's own verify reads it all).
QUICK_READ = 64 << 10
_MONTHS = {
    name: number
    for number, name in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}


def line(check, ok, text, figures=""):
    """One readiness line: `evidence` when it holds (or is neutral), else `reason`."""
    entry = {"check": check, "item": TITLES[check], "ok": ok, ("reason" if ok is False else "evidence"): text}
    entry["figures"] = figures
    return entry


def next_workshop_date(value, now):
    """The next workshop's date: `value` (YYYY-MM-DD, or an ISO time: its UTC date), default 7 days after `now`."""
    if not value:
        return (now + timedelta(days=7)).date()
    text = str(value).strip()
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        try:
            return date(*(int(part) for part in text.split("-")))
        except ValueError:
            pass
    moment = parse_time(text)
    if moment is None:
        raise WorkshopError(
            f"next_workshop is '{text}', not a date: give the next workshop's date as YYYY-MM-DD (readiness_next_workshop)",
            next_workshop=text,
        )
    return moment.date()


def _day_end(day):
    """The first moment after `day` (UTC): a certificate must still be valid then."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)


def _stamp(moment):
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# --- 1. the newest backup, and 2. the restore test ---------------------------------------------------


def _quick_read(path, size):
    """Read both ends of a file (and a tar's first header); returns a problem or None."""
    with open(path, "rb") as stream:
        head = stream.read(QUICK_READ)
        if len(head) < min(size, QUICK_READ):
            return f"{path}: only {len(head)} bytes could be read"
        if size > QUICK_READ:
            stream.seek(max(size - QUICK_READ, QUICK_READ))
            tail = stream.read()
            if len(tail) != size - max(size - QUICK_READ, QUICK_READ):
                return f"{path}: its end could not be read"
    if path.endswith(".tar"):
        try:
            # Opening reads the first header; an empty archive (no outputs) has none and is fine. (A
            # further next() on it seeks to offset -1 on Python 3.10 and fails.)
            with tarfile.open(path, "r:"):
                pass
        except (tarfile.TarError, OSError) as exc:
            return f"{path}: not a readable tar archive ({exc})"
    return None


def check_backup(backup_dir, record):
    """The newest sealed backup exists, its MANIFEST parses, its files have the listed sizes and read."""
    if not os.path.isdir(backup_dir):
        # The same text as an empty folder: writing readiness.json makes the folder, and a second run
        # on unchanged data must say the same.
        return line("backup", False, f"No backup in {backup_dir} (no backup-*/{MANIFEST}): run playbooks/backup.yml"), None
    names = sealed_backups(backup_dir)
    if not names:
        return line("backup", False, f"No backup in {backup_dir} (no backup-*/{MANIFEST}): run playbooks/backup.yml"), None
    name = names[-1]
    folder = os.path.join(backup_dir, name)
    try:
        manifest = read_manifest(folder)
    except WorkshopError as exc:
        return line("backup", False, f"{exc.msg}: the MANIFEST of the newest backup is unreadable"), name
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return line("backup", False, f"{os.path.join(folder, MANIFEST)} lists no files: the backup is unusable"), name
    problems = []
    total = 0
    for relpath, entry in sorted(files.items()):
        path = os.path.join(folder, relpath)
        listed = entry.get("size") if isinstance(entry, dict) else None
        try:
            size = os.stat(path).st_size
            if size != listed:
                problems.append(f"{path}: {size} bytes, its MANIFEST lists {listed}")
                continue
            problem = _quick_read(path, size)
        except OSError as exc:
            problem = f"{path}: {exc.strerror}"
        if problem:
            problems.append(problem)
        total += size if not problem else 0
    verify = (record.get("backup") or {}).get("verify") or {}
    verified = verify.get("backup") == name
    if verified and verify.get("ok") is False:
        problems.append(f"its verification at {verify.get('at')} failed ({len(verify.get('failures') or [])} failures)")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        return line("backup", False, "; ".join(problems[:5]) + more), name
    said = f"verified at {verify.get('at')}" if verified else "no verification of it in the run record"
    return line(
        "backup", True, f"{folder}: MANIFEST and {len(files)} files ({human_bytes(total)}) read, sizes as listed; {said}"
    ), name


def check_restore_test(record, record_path, max_age_days, now, newest=None, will_run=False):
    """The run record's restore_test passed and is not older than `max_age_days`."""
    entry = record.get("restore_test") or {}
    then = parse_time(entry.get("at"))
    plan = f"; a restore test of {newest} is run (readiness_run_restore_test)" if will_run and newest else ""
    if not entry or then is None:
        return line("restore_test", False, f"No restore test in {record_path}{plan or ': run playbooks/restore_test.yml'}")
    age = (now - then).total_seconds() / 86400
    days = math.floor(age)
    unfetched = fetch_failed(entry)
    tested = entry.get("backup") or "the newest backup"
    which = f"{tested}{' on ' + str(entry.get('source')) if unfetched else ''} at {_stamp(then)}"
    which += ", which could not be fetched" if unfetched else ""
    if not entry.get("ok"):
        failures = failures_text(entry.get("failures"))
        return line(
            "restore_test",
            False,
            f"The last restore test ({which}) FAILED: {failures or 'see the run record'}{plan}",
            f"{days} days ago",
        )
    if age > max_age_days:
        return line(
            "restore_test", False, f"The last restore test ({which}) is older than {max_age_days} days{plan}", f"{days} days ago"
        )
    compared = entry.get("files_compared")
    return line("restore_test", True, f"Passed: {which}, {compared} files compared", f"{days} days ago")


# --- 3. the TLS certificate --------------------------------------------------------------------------


def _openssl_time(text):
    """notAfter=Dec  2 21:34:13 2026 GMT, as openssl x509 prints it (not locale dependent)."""
    month, day, clock, year = text.split()[:4]
    hour, minute, second = (int(part) for part in clock.split(":"))
    return datetime(int(year), _MONTHS[month], int(day), hour, minute, second, tzinfo=timezone.utc)


def parse_certificate(pem, run, where):
    """{subject, not_before, not_after, names, sha256} of the first certificate of `pem` (text), read by openssl."""
    rc, out, err = run(
        ["openssl", "x509", "-noout", "-subject", "-startdate", "-enddate", "-fingerprint", "-sha256", "-ext", "subjectAltName"],
        pem,
    )
    if rc != 0:
        raise WorkshopError(f"{where} holds no certificate openssl can read: {err.strip() or out.strip()}", path=where)
    facts = {"names": []}
    lines = out.splitlines()
    for index, text in enumerate(lines):
        key, _sep, value = text.partition("=")
        key = key.strip().lower()
        if key == "subject":
            facts["subject"] = value.strip()
        elif key == "notbefore":
            facts["not_before"] = _openssl_time(value)
        elif key == "notafter":
            facts["not_after"] = _openssl_time(value)
        elif key.endswith("fingerprint"):
            facts["sha256"] = value.strip().replace(":", "").lower()
        elif text.startswith("X509v3 Subject Alternative Name") and index + 1 < len(lines):
            facts["names"] = [part.strip()[4:] for part in lines[index + 1].split(",") if part.strip().startswith("DNS:")]
    if "not_after" not in facts:
        raise WorkshopError(f"openssl printed no validity for the certificate at {where}: {out.strip()}", path=where)
    return facts


def name_matches(domain, names):
    """Whether `domain` is one of the certificate's DNS names (a wildcard covers one label)."""
    domain = domain.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == domain:
            return True
        if name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]:
            return True
    return False


def fetch_served_certificate(address, server_name, timeout):
    """The PEM of the certificate a TLS server at `address` (host:port) serves for `server_name` (SNI)."""
    host, _sep, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # read it as served, whoever signed it: validity is judged apart
    with socket.create_connection((host, int(port)), timeout=timeout) as sock, context.wrap_socket(
        sock, server_hostname=server_name
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der)


def _certificate_problems(label, cert, domain, next_day, now):
    problems = []
    if cert["not_after"] < _day_end(next_day):
        problems.append(
            f"the {label} expires {_stamp(cert['not_after'])}, before the end of the next workshop on {next_day.isoformat()}"
        )
    if cert.get("not_before") and cert["not_before"] > now:
        problems.append(f"the {label} is not valid before {_stamp(cert['not_before'])}")
    if not name_matches(domain, cert["names"]):
        names = ", ".join(cert["names"]) or f"no DNS name (subject {cert.get('subject', '?')})"
        problems.append(f"the {label} is for {names}, not {domain}")
    return problems


def check_certificate(project_dir, env, env_file, next_day, now, run, cert_path=None, domain=None, address=None, timeout=3.0):
    """The certificate of DOMAIN, from SSL_CERT_PATH and as served, valid beyond the next workshop's day."""
    domain = domain or env.get("DOMAIN")
    relative = cert_path or env.get("SSL_CERT_PATH")
    if not domain:
        return line("certificate", False, f"DOMAIN is not set in {env_file}: set it (or readiness_domain)"), {}
    if not relative:
        return line("certificate", False, f"SSL_CERT_PATH is not set in {env_file}: set it (or readiness_cert_path)"), {}
    path = os.path.normpath(os.path.join(project_dir, relative))
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            pem = stream.read()
        cert = parse_certificate(pem, run, path)
    except OSError as exc:
        return line("certificate", False, f"Cannot read the certificate {path} (SSL_CERT_PATH={relative}): {exc.strerror}"), {}
    except WorkshopError as exc:
        return line("certificate", False, f"{exc.msg} (SSL_CERT_PATH={relative})"), {}
    address = address or f"{domain}:443"
    problems = _certificate_problems(f"certificate at {path}", cert, domain, next_day, now)
    facts = {"path": path, "domain": domain, "file": _cert_facts(cert, now), "address": address, "served": None}
    served = None
    try:
        served = parse_certificate(fetch_served_certificate(address, domain, timeout), run, address)
    except (OSError, ValueError) as exc:
        served_text = f"not reachable on {address} ({getattr(exc, 'strerror', None) or exc}): the file alone was checked"
    except WorkshopError as exc:
        served_text = f"{address}: {exc.msg}"
        problems.append(f"what {address} serves is not a certificate openssl reads")
    else:
        facts["served"] = _cert_facts(served, now)
        if served.get("sha256") == cert.get("sha256"):
            served_text = f"{address} serves this certificate"
        else:
            served_text = f"{address} serves a DIFFERENT certificate (until {_stamp(served['not_after'])}): reload nginx"
            problems += _certificate_problems(f"certificate served on {address}", served, domain, next_day, now)
    earliest = min(cert["not_after"], served["not_after"]) if served else cert["not_after"]
    days_left = math.floor((earliest - now).total_seconds() / 86400)
    figures = f"{days_left} days left"
    facts["days_left"] = days_left
    if problems:
        return line("certificate", False, "; ".join(problems) + f"; {served_text}", figures), facts
    return (
        line(
            "certificate",
            True,
            f"{path} for {domain} valid until {_stamp(cert['not_after'])}, beyond the next workshop on "
            f"{next_day.isoformat()}; {served_text}",
            figures,
        ),
        facts,
    )


def _cert_facts(cert, now):
    return {
        "subject": cert.get("subject"),
        "names": cert["names"],
        "not_before": cert["not_before"].isoformat() if cert.get("not_before") else None,
        "not_after": cert["not_after"].isoformat(),
        "sha256": cert.get("sha256"),
        "days_left": math.floor((cert["not_after"] - now).total_seconds() / 86400),
    }


# --- 4. disk -----------------------------------------------------------------------------------------


def _existing(path):
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_disk(outputs_dir, backup_root, record, record_path, margin):
    """Free space on the filesystems of the outputs folder and the backup root, each against margin x the
    last workshop's outputs (the run record's backup.outputs.bytes, else the outputs folder as it is)."""
    recorded = ((record.get("backup") or {}).get("outputs") or {}).get("bytes")
    if isinstance(recorded, int):
        size, source = recorded, f"backup.outputs.bytes of {record_path}"
    elif os.path.isdir(outputs_dir):
        size, source = tree_usage(outputs_dir)["bytes"], f"{outputs_dir} as it is now, no backup recorded"
    else:
        return line(
            "disk", False, f"The last workshop's outputs size is unknown: no backup in {record_path}, no folder {outputs_dir}"
        ), {}
    need = int(size * margin)
    filesystems = {}
    for path in (outputs_dir, backup_root):
        probe = _existing(path)
        filesystems.setdefault(os.stat(probe).st_dev, []).append((path, probe))
    free, short = {}, []
    for paths in filesystems.values():
        available = shutil.disk_usage(paths[0][1]).free
        for path, _probe in paths:
            free[path] = available
        if available < need:
            short.append(" and ".join(path for path, _probe in paths))
    figures = "; ".join(f"{human_bytes(free[path])} free for {path}" for path in (outputs_dir, backup_root))
    if len(filesystems) == 1:
        figures = f"{human_bytes(free[outputs_dir])} free"
    facts = {"outputs_bytes": size, "margin": margin, "needed_bytes": need, "free_bytes": free, "source": source}
    needs = f"{human_bytes(need)} free needed ({margin:g} x {human_bytes(size)}, the last workshop's outputs: {source})"
    if short:
        return line("disk", False, f"{needs}, less on the filesystem of {', '.join(short)}", figures), facts
    where = " and ".join(" and ".join(path for path, _probe in paths) for paths in filesystems.values())
    shared = "one filesystem" if len(filesystems) == 1 else "each filesystem"
    return line("disk", True, f"{needs}, there on {shared} of {where}", figures), facts


# --- 5. images ---------------------------------------------------------------------------------------

_IMAGE = re.compile(r"^\s*(?:-\s+)?image:\s*[\"']?([^\"'\s#]+)", re.M)
_INCLUDE_ITEM = re.compile(r"^\s*-\s*(?:path:\s*)?[\"']?([^\"'\s#]+\.ya?ml)[\"']?\s*$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")


def _substitute(text, env):
    def value(match):
        name = match.group(1) or match.group(4)
        found = env.get(name, os.environ.get(name))
        if match.group(2) == ":-" and not found:
            return match.group(3)
        if match.group(2) == "-" and found is None:
            return match.group(3)
        return found or ""

    return _VARIABLE.sub(value, text)


def _included(text):
    """Files named in a top-level `include:` list of a compose file."""
    found, inside = [], False
    for text_line in text.splitlines():
        if re.match(r"^include:\s*$", text_line):
            inside = True
            continue
        if inside and text_line and not text_line[0].isspace():
            inside = False
        if inside:
            match = _INCLUDE_ITEM.match(text_line)
            if match:
                found.append(match.group(1))
    return found


def compose_images(project_dir, env):
    """The `image:` of every service of the project's compose files (COMPOSE_FILE of the .env, else the
    default file, and the files they include), with ${VAR} from the .env; sorted."""
    listed = env.get("COMPOSE_FILE")
    separator = env.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    queue = (
        [part for part in listed.split(separator) if part]
        if listed
        else [n for n in _DEFAULT_FILES if os.path.isfile(os.path.join(project_dir, n))][:1]
    )
    images, seen = set(), set()
    while queue:
        path = os.path.normpath(os.path.join(project_dir, queue.pop(0)))
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        images.update(_substitute(match, env) for match in _IMAGE.findall(text))
        queue += [os.path.join(os.path.dirname(path), name) for name in _included(text)]
    return sorted(image for image in images if image)


def check_images(project, wanted, project_dir, env, docker_errors):
    """Every image of the compose project is on the Docker Engine (`wanted`, else the compose files'
    `image:` and the images of the project's containers)."""
    if not wanted:
        images = set(compose_images(project_dir, env))
        for container in project.containers(missing_ok=True):
            images.add(container.attrs.get("Config", {}).get("Image") or container.image.id)
        wanted = sorted(images)
    if not wanted:
        return line(
            "images",
            False,
            f"Found no image of compose project '{project.name}' (no image: in its compose files, no containers): "
            "list them in readiness_images",
        )
    missing = []
    for image in wanted:
        try:
            project.client.images.get(image)
        except docker_errors.ImageNotFound:
            missing.append(image)
        except docker_errors.DockerException as exc:
            raise WorkshopError(f"Docker at {project.engine} failed looking up image {image}: {exc}", image=image) from None
    if missing:
        return line(
            "images",
            False,
            f"Missing on {project.engine}: {', '.join(missing)} (of {len(wanted)} images of project '{project.name}'): "
            "pull or build them",
        )
    return line("images", True, f"{len(wanted)} images of project '{project.name}' on {project.engine}: {', '.join(wanted)}")


# --- 6. queues, 7. the GPU host ----------------------------------------------------------------------


def check_queues(counts, address):
    moving = {queue: counts[queue] for queue in ("pending", "running") if counts.get(queue)}
    if moving:
        jobs = ", ".join(f"{number} {queue}" for queue, number in moving.items())
        return line("queues", False, f"Redis at {address} still holds {jobs}: drain or cancel them (playbooks/drain.yml)")
    return line("queues", True, f"No pending or running job in Redis at {address}")


def check_gpu_host(host, port, timeout, tries=2):
    if not host:
        return line(
            "gpu_host",
            None,
            "No separate GPU host configured (inventory group gpu empty, readiness_gpu_host unset): the workers run on the VPS",
        )
    error = None
    for _dummy in range(tries):
        started = datetime.now(timezone.utc)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            error = exc.strerror or str(exc)
            continue
        took = (datetime.now(timezone.utc) - started).total_seconds() * 1000
        return line("gpu_host", True, f"{host}:{port} answers from the VPS", f"{took:.1f} ms")
    return line("gpu_host", False, f"{host}:{port} does not answer from the VPS ({error}): is the GPU host up and reachable?")


# --- the whole, its outcome and its rendering --------------------------------------------------------


def overall_ok(lines):
    return not any(entry["ok"] is False for entry in lines)


def outcome(readiness):
    """What decides a rewrite: the verdicts and their texts, less the time and the drifting figures."""
    if not readiness:
        return None
    return json.loads(
        json.dumps(
            {
                "ok": readiness.get("ok"),
                "next_workshop": readiness.get("next_workshop"),
                "lines": [{k: v for k, v in entry.items() if k != "figures"} for entry in readiness.get("lines") or []],
            }
        )
    )


def mark(ok):
    return {True: "✓", False: "✗"}.get(ok, "-")


def _text(entry):
    text = entry.get("evidence") if "evidence" in entry else entry.get("reason")
    return f"{text} ({entry['figures']})" if entry.get("figures") else text


def table(readiness):
    """The screen table: one row per line, the mark, the item, the evidence or reason."""
    lines = readiness["lines"]
    width = max(len(entry["item"]) for entry in lines)
    verdict = "READY" if readiness["ok"] else "NOT READY"
    rows = [f"Next-workshop readiness for {readiness['next_workshop']}: {verdict} (checked {readiness['at']})"]
    rows += [f"{mark(entry['ok'])} {entry['item'].ljust(width)}  {_text(entry)}" for entry in lines]
    return rows


def _cell(text):
    return text.replace("|", "\\|")


def markdown(readiness, workshop_id):
    failed = sum(entry["ok"] is False for entry in readiness["lines"])
    verdict = "READY" if readiness["ok"] else f"NOT READY ({failed} of {len(readiness['lines'])} checks failed)"
    rows = [
        f"# Next-workshop readiness: {workshop_id}",
        "",
        f"Next workshop: {readiness['next_workshop']}. Checked {readiness['at']}. **{verdict}**",
        "",
        "| | Check | Evidence or reason |",
        "|---|---|---|",
    ]
    rows += [f"| {mark(entry['ok'])} | {entry['item']} | {_cell(_text(entry))} |" for entry in readiness["lines"]]
    return "\n".join(rows) + "\n"
