#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: TCP latency from this host to another (VPS to GPU host)."""

DOCUMENTATION = r"""
---
module: network_probe
short_description: Measure the TCP connect latency from the workshop host to another host
description:
  - Opens O(samples) TCP connections to O(host):O(port) and reports the median connect time and
    how many attempts timed out or were refused - the report's "Latency VPS to GPU" and
    "Connection timeouts".
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
extends_documentation_fragment:
  - workshop_attributes.read_only
options:
  host:
    description: The host to reach.
    type: str
    required: true
  port:
    description: A TCP port that host listens on (SSH by default).
    type: int
    default: 22
  samples:
    description: Connections to open.
    type: int
    default: 5
  timeout:
    description: Seconds each connection may take.
    type: float
    default: 3.0
"""

EXAMPLES = r"""
- name: Latency VPS to GPU host
  network_probe:
    host: 10.0.0.5
  register: latency

- name: The GPU host is near
  ansible.builtin.assert:
    that: latency.latency_ms < 50
"""

RETURN = r"""
latency_ms:
  description: Median connect time in milliseconds; null when no connection succeeded.
  returned: always
  type: float
timeouts:
  description: Attempts that timed out or were refused.
  returned: always
  type: int
samples_ms:
  description: Every successful connect time, in milliseconds.
  returned: always
  type: list
  elements: float
"""

import socket
import statistics
import time

from ansible.module_utils.basic import AnsibleModule


def probe(host, port, samples, timeout):
    times, failures = [], 0
    for _dummy in range(samples):
        start = time.perf_counter()
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            failures += 1
            continue
        times.append(round((time.perf_counter() - start) * 1000, 3))
    return dict(latency_ms=statistics.median(times) if times else None, timeouts=failures, samples_ms=times)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            port=dict(type="int", default=22),
            samples=dict(type="int", default=5),
            timeout=dict(type="float", default=3.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    module.exit_json(changed=False, **probe(params["host"], params["port"], params["samples"], params["timeout"]))


if __name__ == "__main__":
    main()
