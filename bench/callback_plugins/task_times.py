# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a playbook's time goes: seconds per task (all hosts together), written as JSON for the benchmarks.

ansible.posix's profile_tasks is not installed offline; this is the part of it the benchmarks need.
Enable with ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=task_times;
the times go to $COMFY_WRAPUP_TASK_TIMES (a JSON list of [play, task, seconds], in run order).
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: task_times
type: aggregate
short_description: Seconds per task, as JSON, for the benchmarks
description:
  - Writes [play, task, seconds] of every task, in run order, to the file named by COMFY_WRAPUP_TASK_TIMES.
requirements:
  - enable in configuration
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.times, self.current, self.play = [], None, ""

    def _close(self):
        if self.current is not None:
            name, start = self.current
            self.times.append([self.play, name, round(time.perf_counter() - start, 3)])
            self.current = None

    def v2_playbook_on_play_start(self, play):
        self._close()
        self.play = play.get_name()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = (task.get_name(), time.perf_counter())

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("COMFY_WRAPUP_TASK_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as out:
                json.dump(self.times, out, indent=0)
