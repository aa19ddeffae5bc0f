# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback: the fleet summary at the end of a post_workshop.yml run, one line per workshop."""

DOCUMENTATION = r"""
name: fleet_summary
type: aggregate
short_description: One line per workshop at the end of the run, on screen and in a file
description:
  - Active only in a run that has the fleet summary play (playbooks/fleet_summary.yml, tag C(fleet_summary)).
  - Every workshop host of the run gets one line - drained at, jobs, backup verified, archived, shared,
    report path, and any storage target the retention schedule could not reach - from what its run
    record says (read by the C(fleet_summary) module in that play), or, for a host that failed or was
    unreachable, the play and task that failed and the error message.
  - Ansible drops a failed host from the later plays, so no play can speak for it; this callback sees
    every task result of the run and so knows each host's last fatal failure.
  - The summary is printed after the play recap and written to C(<fleet_summary_dest>/fleet-<UTC time>.md)
    and C(.json) on the control node (through a temporary name, then renamed). Check mode prints it and writes nothing.
  - A run stopped with Ctrl-C gets its summary too, as Ansible exits, each workshop's line saying the play
    and task it was stopped in (or what it had finished, or its failure).
requirements:
  - enabled in ansible.cfg (callbacks_enabled = fleet_summary, callback_plugins = callback_plugins)
"""

import atexit
import json
import os
import signal
import tempfile
import time

from ansible import context
from ansible.errors import AnsibleError
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.callback import CallbackBase
from ansible.utils.vars import load_extra_vars

# The play that reads each workshop's line (playbooks/fleet_summary.yml) carries this tag.
SUMMARY_TAG = "fleet_summary"
# What the role hands over, as a fact of each host that reached the summary play.
FACT = "__fleet_summary"
MESSAGE_LIMIT = 400


def _one_line(text, limit=MESSAGE_LIMIT):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_message(result):
    """The message of a failed (or unreachable) task result; for a loop, the first failed item's."""
    for item in result.get("results") or []:
        if isinstance(item, dict) and (item.get("failed") or item.get("unreachable")):
            return failure_message(item)
    for key in ("msg", "stderr", "module_stderr", "reason"):
        if result.get(key):
            return _one_line(result[key])
    return "failed without a message"


def _extra_vars():
    """This run's extra vars; {} when they cannot be read (an unreadable -e file: the run itself reports it)."""
    try:
        return load_extra_vars(DataLoader())
    except (AnsibleError, OSError):
        return {}


def _plain(value):
    """`value` when it is a plain (untemplated) text, else None (null, a number, a template: the run reads those)."""
    return value if isinstance(value, str) and "{{" not in value else None


def _utc(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def interrupted_failures(hosts, entries, failures, running):
    """failures, with a row for each host that neither failed nor reached the summary: the play and task
    it was stopped in when the run was interrupted."""
    stopped = dict(failures)
    for host in hosts:
        if host not in stopped and host not in entries:
            if host in running:
                play, task = running[host]
                stopped[host] = {"play": play, "task": task, "msg": "the run was interrupted here", "interrupted": True}
            else:
                stopped[host] = {
                    "play": None,
                    "task": None,
                    "msg": "the run was interrupted before its first task",
                    "interrupted": True,
                }
    return stopped


def summary_rows(hosts, entries, failures, workshop_ids):
    """One row per host (in the order given): what its record says, or its failure."""
    rows = []
    for host in hosts:
        failure = failures.get(host)
        entry = entries.get(host) or {}
        label = str(entry.get("workshop_id") or workshop_ids.get(host) or "").strip()
        row = {"host": host, "workshop_id": label or host}
        if failure or not entry:
            row.update(ok=False, error=failure or {"play": None, "task": None, "msg": "did not reach the fleet summary"})
        else:
            row.update(ok=True, error=None, **{k: v for k, v in entry.items() if k != "workshop_id"})
        rows.append(row)
    return rows


def _jobs(row):
    if row.get("jobs_completed") is None:
        return "jobs: not recorded"
    failed = row.get("jobs_failed")
    return f"jobs: {row['jobs_completed']} completed" + (f", {failed} failed" if failed is not None else "")


def _drain(row):
    if not row.get("drained_at"):
        return "drained: not recorded"
    return ("drained at " if row.get("drained") else "NOT drained, stopped at ") + row["drained_at"]


def _backup(row):
    if not row.get("backup"):
        return "backup: none"
    verified = {True: "verified", False: "verification FAILED", None: "not verified"}[row.get("backup_verified")]
    return f"backup {row['backup']} {verified}"


def _shared(row):
    share = row.get("shared")
    if not share:
        return "shared: no"
    until = f" until {share['until']}" if share.get("until") else ""
    by = f" by {share['delivery']}" if share.get("delivery") else ""
    return f"shared: {share['participants']} participants{by}{until}"


def row_text(row):
    """The row as one line: the same words on screen and in the Markdown file."""
    head = f"{row['workshop_id']} ({row['host']})"
    if not row["ok"]:
        error = row["error"]
        where = f' in play "{error["play"]}", task "{error["task"]}"' if error.get("task") else ""
        return f"{head}: {'INTERRUPTED' if error.get('interrupted') else 'FAILED'}{where}: {error['msg']}"
    archived = "archived: " + (", ".join(row["archived"]) if row.get("archived") else "no")
    report = "report " + row["report"] if row.get("report") else "report: none"
    parts = [_drain(row), _jobs(row), _backup(row), archived, _shared(row), report]
    if row.get("retention_unreached"):
        parts.append("retention did NOT finish on " + ", ".join(row["retention_unreached"]) + " (did not answer)")
    return f"{head}: " + "; ".join(parts)


def summary_markdown(rows, at, interrupted=False, check=False):
    stopped = sum(1 for row in rows if not row["ok"] and row["error"].get("interrupted"))
    failed = sum(1 for row in rows if not row["ok"]) - stopped
    through = len(rows) - failed - stopped
    counts = f"{len(rows)} workshop{'' if len(rows) == 1 else 's'}: {through} went through the run, {failed} failed"
    if interrupted:
        counts += f", {stopped} stopped by Ctrl-C. " + (
            "A check run: nothing was changed" if check else "Every step is safe to re-run: run the playbook again to finish"
        )
    lines = [f"# Fleet summary, {at}" + (" (interrupted)" if interrupted else ""), "", counts + ".", ""]
    return "\n".join(lines + [f"- {row_text(row)}" for row in rows]) + "\n"


def write_atomically(path, text):
    """Write through a temporary name in the same folder, then rename: never a half-written summary."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".fleet-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        self.active = False
        self.play = None
        self.entries = {}
        self.failures = {}
        self.workshop_ids = {}
        self.workshop_id = None
        self.dest = ""
        self.basedir = None
        # For a run stopped by Ctrl-C: the play and task each host was last given, and whether it was.
        self.running = {}
        self.play_hosts = set()
        self.first_host = None  # (play, host): whose variables say fleet_summary_dest when no play handed it
        self.interrupted = False
        self.summarised = False

    def v2_playbook_on_start(self, playbook):
        # Decided from the playbook, not when the summary play starts: when every host has failed,
        # Ansible runs no further play, and the summary is what the admin needs most then.
        skipped = {SUMMARY_TAG, "always"} & set(context.CLIARGS.get("skip_tags") or ())
        self.active = not skipped and any(SUMMARY_TAG in (play.tags or []) for play in playbook.get_plays())
        # Where the summary goes when no host reaches the summary play to say: -e fleet_summary_dest, else
        # the inventory's (read only then: _inventory_dest), else the role's default (reports/ beside the
        # playbook that was run).
        self.basedir = playbook._basedir
        extra = _extra_vars()
        self.dest = _plain(extra.get("fleet_summary_dest"))
        # Given with -e, it is the workshop id of every host, whatever the inventory says; one this callback
        # cannot read as a plain text ("" too) labels the rows with the host names.
        self.workshop_id = (_plain(extra["workshop_id"]) or "") if "workshop_id" in extra else None
        if self.active:
            # Ansible stops on Ctrl-C without its stats (no v2_playbook_on_stats): note the interrupt, let
            # Ansible's own handler stop the run, and give the summary as the process exits.
            ansible_handler = signal.getsignal(signal.SIGINT)
            main_process = os.getpid()

            def note_interrupt(signum, frame):
                self.interrupted = True
                if callable(ansible_handler):
                    ansible_handler(signum, frame)  # Ansible's raises KeyboardInterrupt, after telling its workers
                elif ansible_handler != signal.SIG_IGN:
                    raise KeyboardInterrupt

            signal.signal(signal.SIGINT, note_interrupt)
            atexit.register(lambda: os.getpid() == main_process and self.summarise_interrupted())

    def v2_playbook_on_play_start(self, play):
        self.play = play.get_name().strip()
        # Every host of the play (--limit applied), for a summary after Ctrl-C: one not yet given a task
        # has a line too.
        try:
            hosts = play.get_variable_manager()._inventory.get_hosts(play.hosts)
        except (AttributeError, AnsibleError):  # a private API: without it, such a host has no line
            hosts = []
        for host in hosts:
            if host.get_name() not in self.play_hosts:
                self.play_hosts.add(host.get_name())
                self._note_workshop(host)
        if self.first_host is None and hosts:
            self.first_host = (play, hosts[0])

    def _note_workshop(self, host):
        # The workshop of a host that may not reach the summary play: -e workshop_id, which wins over the
        # inventory as in Ansible (an empty one too: the run refused it, and the row is the host's), else
        # its host line's.
        workshop_id = self.workshop_id if self.workshop_id is not None else host.vars.get("workshop_id")
        if isinstance(workshop_id, str) and "{" not in workshop_id:
            self.workshop_ids.setdefault(host.get_name(), workshop_id)

    def _failed(self, result, prefix=""):
        self._note_workshop(result._host)
        self.failures[result._host.get_name()] = {
            "play": self.play,
            "task": result._task.get_name().strip(),
            "msg": prefix + failure_message(result._result),
        }

    def v2_runner_on_start(self, host, task):
        self.running[host.get_name()] = (self.play, task.get_name().strip())

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not ignore_errors:
            self._failed(result)

    def v2_runner_on_unreachable(self, result):
        self._failed(result, "unreachable: ")

    def v2_runner_on_ok(self, result):
        handed = (result._result.get("ansible_facts") or {}).get(FACT)
        if isinstance(handed, dict):
            self.entries[result._host.get_name()] = handed.get("entry") or {}
            self.workshop_ids.update({h: i for h, i in (handed.get("workshop_ids") or {}).items() if i})
            self.dest = handed.get("dest") or ""

    def v2_playbook_on_stats(self, stats):
        if not self.active:
            return
        hosts = sorted(set(stats.processed) | set(self.entries))
        # A failure that a rescue caught is no failure of the host: the host's final state decides.
        failures = {h: f for h, f in self.failures.items() if stats.failures.get(h) or stats.dark.get(h)}
        self.summarise(hosts, failures)

    def summarise_interrupted(self):
        """After Ctrl-C: every host the run had reached, where it stopped (a failure, rescued or not,
        stands: without Ansible's stats there is no telling)."""
        if not self.interrupted or self.summarised or not self.play_hosts:
            return
        hosts = sorted(self.play_hosts | set(self.running) | set(self.entries) | set(self.failures))
        self.summarise(hosts, interrupted_failures(hosts, self.entries, self.failures, self.running), interrupted=True)

    def _inventory_dest(self):
        """fleet_summary_dest as the inventory or group_vars set it, else the role's default (reports/):
        for a run whose summary play no host reached (Ctrl-C, every host failed), as that play would have."""
        value = None
        if self.first_host is not None:
            play, host = self.first_host
            try:
                value = _plain(play.get_variable_manager().get_vars(play=play, host=host).get("fleet_summary_dest"))
            except (AttributeError, AnsibleError):  # a private API: without it, the default
                value = None
        return "reports" if value is None else value

    def summarise(self, hosts, failures, interrupted=False):
        self.summarised = True
        if self.dest is None:
            self.dest = self._inventory_dest()
        at = _utc(time.time())
        rows = summary_rows(hosts, self.entries, failures, self.workshop_ids)
        check = bool(context.CLIARGS.get("check"))
        markdown = summary_markdown(rows, at, interrupted, check)
        where = "on screen only (fleet_summary_dest is empty)"
        if self.dest:
            # A relative folder is relative to the playbook that was run (post_workshop.yml: this project),
            # not to the imported playbooks/fleet_summary.yml.
            folder = os.path.join(self.basedir or os.getcwd(), os.path.expanduser(self.dest))
            stem = os.path.join(os.path.abspath(folder), "fleet-" + at.replace("-", "").replace(":", ""))
            if check:
                where = f"not written (check mode): {stem}.md and .json"
            else:
                try:
                    write_atomically(
                        stem + ".json",
                        json.dumps({"at": at, "interrupted": interrupted, "workshops": rows}, indent=2, sort_keys=True) + "\n",
                    )
                    write_atomically(stem + ".md", markdown)
                    where = f"written to {stem}.md and {stem}.json"
                except OSError as exc:
                    where = f"NOT written to {stem}.md ({exc.strerror}): check fleet_summary_dest"
        self._display.banner("FLEET SUMMARY")
        for line in markdown.splitlines()[2:]:
            stopped = line.startswith("- ") and (": FAILED" in line or ": INTERRUPTED" in line)
            self._display.display(line, color="red" if stopped else None)
        self._display.display(f"Fleet summary {where}")
