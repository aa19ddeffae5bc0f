#!/usr/bin/python
# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: GPU facts of a GPU host, from nvidia-smi."""

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Read a GPU host's GPUs with nvidia-smi
description:
  - Runs C(nvidia-smi -q -x) (or reads its saved output from O(xml_file)) and returns each GPU's
    model, memory used and total, temperature, throttle reasons, ECC and Xid errors, plus the summary
    the workshop report shows. Xid errors are counted from the kernel log when O(kernel_log) is given.
  - A host without nvidia-smi returns RV(measured=false) with the reason, so the report can say
    "not measured" instead of failing.
version_added: "0.1.0"
author: comfy-wrapup contributors (@comfy-wrapup)
extends_documentation_fragment:
  - workshop_attributes.read_only
options:
  xml_file:
    description: Saved output of C(nvidia-smi -q -x) to read instead of running nvidia-smi.
    type: path
  kernel_log:
    description: A file of kernel log text (C(dmesg), C(journalctl -k)) to count NVRM Xid errors in.
    type: path
"""

EXAMPLES = r"""
- name: Analyze GPU performance
  gpu_facts:
  register: gpu

- name: No thermal throttling
  ansible.builtin.assert:
    that: not gpu.measured or not gpu.summary.thermal_throttling
"""

RETURN = r"""
measured:
  description: Whether GPU facts could be read.
  returned: always
  type: bool
reason:
  description: Why not, when RV(measured) is false.
  returned: when not measured
  type: str
gpus:
  description: One entry per GPU, as nvidia-smi reports it.
  returned: when measured
  type: list
  elements: dict
summary:
  description: The report's GPU figures.
  returned: when measured
  type: dict
  sample: {peak_memory_used_pct: 71.2, avg_memory_used_pct: 71.2, peak_temperature_c: 64, thermal_throttling: false,
           ecc_errors: 0, xid_errors: 0}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_gpu import parse_nvidia_smi_xml, summarize_gpus, xid_errors_from_kernel_log


def read_file(path, option, what):
    """The bytes of `path`; a file that cannot be read is a WorkshopError naming it and the option."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise WorkshopError(
            f"Cannot read {what} at {path} on this host ({exc.strerror}): fix {option} or leave it empty", path=path
        ) from None


def report_summary(samples, xid):
    """The summary in the report's terms; ECC errors counted as volatile errors seen on any GPU."""
    summary = summarize_gpus(samples, xid)
    ecc = sum(
        (gpu.get("ecc_correctable_volatile_peak") or 0) + (gpu.get("ecc_uncorrectable_volatile_peak") or 0)
        for gpu in summary["gpus"].values()
    )
    return dict(
        peak_memory_used_pct=summary["memory_used_pct_peak"],
        avg_memory_used_pct=summary["memory_used_pct_avg"],
        peak_temperature_c=summary["temperature_c_peak"],
        thermal_throttling=summary["thermal_throttling"],
        ecc_errors=ecc,
        xid_errors=summary["xid_errors"],
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(xml_file=dict(type="path"), kernel_log=dict(type="path")),
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["xml_file"]:
            xml = read_file(params["xml_file"], "xml_file", "a saved `nvidia-smi -q -x` output (report_gpu_xml_file)")
        else:
            binary = module.get_bin_path("nvidia-smi")
            if binary is None:
                module.exit_json(changed=False, measured=False, reason="no nvidia-smi on this host")
            rc, out, err = module.run_command([binary, "-q", "-x"], binary_data=True)
            if rc != 0:
                module.exit_json(changed=False, measured=False, reason=f"nvidia-smi failed (rc {rc}): {err.strip()[:200]}")
            xml = out
        parsed = parse_nvidia_smi_xml(xml)
        xid = None
        if params["kernel_log"]:
            text = read_file(params["kernel_log"], "kernel_log", "the kernel log").decode("utf-8", errors="replace")
            xid = xid_errors_from_kernel_log(text)
        summary = report_summary([parsed], xid)
    except WorkshopError as exc:
        module.fail_json(msg=exc.msg, **exc.context)
    module.exit_json(changed=False, measured=True, gpus=parsed["gpus"], summary=summary, driver_version=parsed["driver_version"])


if __name__ == "__main__":
    main()
