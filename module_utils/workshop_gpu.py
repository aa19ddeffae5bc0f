"""Reading the GPU host's state from `nvidia-smi -q -x`, and Xid errors from the kernel log.

One dict per GPU with what the report's "GPU Performance" section needs (memory, utilization,
temperature and thresholds, power, clock slowdown reasons, ECC, retired pages / remapped rows),
and a summary over samples taken during the workshop (peaks, averages, throttling, errors).

nvidia-smi writes "N/A" (or "[N/A]", "[Not Supported]") for what a board or driver does not
report: those values are None here, never 0, so "not measured" never reads as "no errors".
"""

import re
import xml.etree.ElementTree as ET
from collections import Counter

from ansible.module_utils.workshop_errors import WorkshopError

# Driver R535 renamed "clocks throttle reasons" to "clocks event reasons"; the flags are the same.
_REASON_SECTIONS = (("clocks_event_reasons", "clocks_event_reason_"), ("clocks_throttle_reasons", "clocks_throttle_reason_"))
_THERMAL_REASONS = ("hw_thermal_slowdown", "sw_thermal_slowdown")
_MISSING = {"", "n/a", "[n/a]", "not supported", "[not supported]", "unknown error", "[unknown error]", "none"}
_NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?)\s*([A-Za-z%/]*)$")

# nvidia-smi -q -x carries no Xid events (they go to the kernel log); this says where to look.
XID_NOT_IN_XML = "nvidia-smi -q -x does not report Xid errors: count them in the kernel log (xid_errors_from_kernel_log)"

# `NVRM: Xid (PCI:0000:07:00): 79, pid=..., GPU has fallen off the bus.`; MIG adds ` GPU-I:.. GPU-CI:..` in the parentheses.
_XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)[^)]*\): (\d+)")

# The Xid codes a workshop is most likely to meet (NVIDIA's Xid catalogue), to name them in the report.
XID_DESCRIPTIONS = {
    13: "Graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors",
    48: "Double-bit ECC error",
    61: "Internal micro-controller breakpoint/warning",
    62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}


def _text(node, path):
    """The stripped text at `path` under `node`, None when absent or reported as not available."""
    found = node.find(path) if node is not None else None
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return None if value.lower() in _MISSING else value


def _number(node, path, unit=None):
    """`81559 MiB` -> 81559, `312.45 W` -> 312.45; None when absent or N/A."""
    value = _text(node, path)
    if value is None:
        return None
    match = _NUMBER.match(value)
    if not match or (unit is not None and match.group(2) != unit):
        raise WorkshopError(f"nvidia-smi reports {path} as {value!r}, expected a number in {unit or 'no unit'}", field=path)
    number = match.group(1)
    return float(number) if "." in number else int(number)


def _first_number(node, paths, unit):
    # Drivers moved and renamed fields over releases: take the first one this driver reports.
    for path in paths:
        value = _number(node, path, unit)
        if value is not None:
            return value
    return None


def _flag(node, path):
    """Yes/No, Active/Not Active -> True/False; None when absent or N/A."""
    value = _text(node, path)
    if value is None:
        return None
    return value.lower() in ("yes", "active", "enabled", "true")


def _throttle_reasons(gpu):
    for section, prefix in _REASON_SECTIONS:
        node = gpu.find(section)
        if node is not None:
            reasons = {child.tag.removeprefix(prefix): _flag(gpu, f"{section}/{child.tag}") for child in node}
            return section, reasons
    return None, {}


def _ecc_block(node):
    """Correctable and uncorrectable totals of one <volatile> or <aggregate> block, with each counter."""
    detail = {}
    correctable = uncorrectable = None
    if node is None:
        return {"correctable": None, "uncorrectable": None, "detail": detail}
    for child in node:
        if len(child):
            # Pre-Ampere layout: <single_bit>/<double_bit> sections, each with its own <total>.
            value = _number(child, "total")
            kind = {"single_bit": "correctable", "double_bit": "uncorrectable"}.get(child.tag)
        else:
            if "correctable" not in child.tag:  # e.g. sram_threshold_exceeded (Yes/No), not a counter
                continue
            value = _number(node, child.tag)
            kind = "uncorrectable" if "uncorrectable" in child.tag else "correctable"
        detail[child.tag] = value
        if value is None or kind is None:
            continue
        if kind == "correctable":
            correctable = (correctable or 0) + value
        else:
            uncorrectable = (uncorrectable or 0) + value
    return {"correctable": correctable, "uncorrectable": uncorrectable, "detail": detail}


def _retired_pages(gpu):
    node = gpu.find("retired_pages")
    if node is None or not len(node):
        return None
    pages = {
        "single_bit_ecc": _number(node, "multiple_single_bit_retirement/retired_count"),
        "double_bit_ecc": _number(node, "double_bit_retirement/retired_count"),
        # Older drivers call the pending state "pending_blacklist".
        "pending": _flag(node, "pending_retirement")
        if node.find("pending_retirement") is not None
        else _flag(node, "pending_blacklist"),
    }
    return None if all(value is None for value in pages.values()) else pages


def _remapped_rows(gpu):
    node = gpu.find("remapped_rows")
    if node is None or not len(node):
        return None
    rows = {
        "correctable": _number(node, "remapped_row_corr"),
        "uncorrectable": _number(node, "remapped_row_unc"),
        "pending": _flag(node, "remapped_row_pending"),
        "failure": _flag(node, "remapped_row_failure"),
    }
    return None if all(value is None for value in rows.values()) else rows


def _xid_errors(gpu):
    """Xid fields if this driver's XML has any (none known do), else None."""
    found = {}
    for node in gpu:
        if "xid" in node.tag.lower():
            found[node.tag] = {child.tag: _text(node, child.tag) for child in node} if len(node) else _text(node, ".")
    return found or None


def parse_gpu(gpu, index=0):
    """One <gpu> element as a dict; see parse_nvidia_smi_xml."""
    memory = gpu.find("fb_memory_usage")
    total, used = _number(memory, "total", "MiB"), _number(memory, "used", "MiB")
    section, reasons = _throttle_reasons(gpu)
    thermal = [reasons.get(name) for name in _THERMAL_REASONS if name in reasons]
    ecc = gpu.find("ecc_errors")
    xid = _xid_errors(gpu)
    return {
        "index": index,
        "id": gpu.get("id"),
        "uuid": _text(gpu, "uuid"),
        "product_name": _text(gpu, "product_name"),
        "performance_state": _text(gpu, "performance_state"),
        "memory_total_mib": total,
        "memory_reserved_mib": _number(memory, "reserved", "MiB"),
        "memory_used_mib": used,
        "memory_free_mib": _number(memory, "free", "MiB"),
        "memory_used_pct": round(used * 100 / total, 1) if total and used is not None else None,
        "utilization_gpu_pct": _number(gpu, "utilization/gpu_util", "%"),
        "utilization_memory_pct": _number(gpu, "utilization/memory_util", "%"),
        "temperature_c": _number(gpu, "temperature/gpu_temp", "C"),
        "temperature_slowdown_c": _number(gpu, "temperature/gpu_temp_slow_threshold", "C"),
        "temperature_shutdown_c": _number(gpu, "temperature/gpu_temp_max_threshold", "C"),
        "temperature_max_operating_c": _number(gpu, "temperature/gpu_temp_max_gpu_threshold", "C"),
        "memory_temperature_c": _number(gpu, "temperature/memory_temp", "C"),
        # Newer drivers on some boards report degrees left before slowdown instead of thresholds.
        "temperature_tlimit_c": _number(gpu, "temperature/gpu_temp_tlimit", "C"),
        "power_draw_w": _first_number(
            gpu,
            (
                "gpu_power_readings/power_draw",
                "gpu_power_readings/instant_power_draw",
                "gpu_power_readings/average_power_draw",
                "power_readings/power_draw",
            ),
            "W",
        ),
        "power_limit_w": _first_number(
            gpu,
            ("gpu_power_readings/current_power_limit", "power_readings/enforced_power_limit", "power_readings/power_limit"),
            "W",
        ),
        "sm_clock_mhz": _number(gpu, "clocks/sm_clock", "MHz"),
        "max_sm_clock_mhz": _number(gpu, "max_clocks/sm_clock", "MHz"),
        "throttle_reasons_element": section,
        "throttle_reasons": reasons,
        "throttle_reasons_active": sorted(name for name, active in reasons.items() if active),
        "thermal_throttling": any(thermal) if any(flag is not None for flag in thermal) else None,
        "ecc_mode": _text(gpu, "ecc_mode/current_ecc"),
        "ecc_errors": {kind: _ecc_block(None if ecc is None else ecc.find(kind)) for kind in ("volatile", "aggregate")},
        "retired_pages": _retired_pages(gpu),
        "remapped_rows": _remapped_rows(gpu),
        "xid_errors": xid,
        "xid_note": None if xid else XID_NOT_IN_XML,
    }


def parse_nvidia_smi_xml(text):
    """Parse `nvidia-smi -q -x` output; returns {timestamp, driver_version, cuda_version, attached_gpus, gpus: [per GPU]}.

    Each GPU: index, id (PCI bus id), uuid, product_name, memory_{total,reserved,used,free}_mib,
    memory_used_pct, utilization_{gpu,memory}_pct, temperature_c and the slowdown / shutdown /
    max operating thresholds, power_draw_w, power_limit_w, throttle_reasons {name: bool},
    throttle_reasons_active, thermal_throttling, ecc_mode, ecc_errors {volatile, aggregate:
    {correctable, uncorrectable, detail}}, retired_pages, remapped_rows, xid_errors (+ xid_note).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text.strip():
        raise WorkshopError("nvidia-smi output is empty: expected the XML of `nvidia-smi -q -x`")
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise WorkshopError(f"nvidia-smi output is not XML ({exc}): run `nvidia-smi -q -x`, not `nvidia-smi -q`") from None
    if root.tag != "nvidia_smi_log":
        raise WorkshopError(f"nvidia-smi XML has root <{root.tag}>, expected <nvidia_smi_log>", root=root.tag)
    gpus = root.findall("gpu")
    if not gpus:
        raise WorkshopError("nvidia-smi XML lists no <gpu>: is the driver loaded and the GPU visible?")
    return {
        "timestamp": _text(root, "timestamp"),
        "driver_version": _text(root, "driver_version"),
        "cuda_version": _text(root, "cuda_version"),
        "attached_gpus": _number(root, "attached_gpus"),
        "gpus": [parse_gpu(gpu, index) for index, gpu in enumerate(gpus)],
    }


def xid_errors_from_kernel_log(text):
    """Count `NVRM: Xid (PCI:...): <code>, ...` lines of dmesg or journal text.

    Returns {total, by_code: {code: count}, by_device: {pci: count}, descriptions: {code: text}}.
    """
    by_code, by_device = Counter(), Counter()
    for match in _XID_LINE.finditer(text or ""):
        by_code[int(match.group(2))] += 1
        by_device[match.group(1).lower()] += 1
    return {
        "total": sum(by_code.values()),
        "by_code": dict(sorted(by_code.items())),
        "by_device": dict(sorted(by_device.items())),
        "descriptions": {code: XID_DESCRIPTIONS.get(code, "see NVIDIA's Xid catalogue") for code in sorted(by_code)},
    }


def _errors_in(gpu):
    """Whether one sample shows GPU errors: volatile ECC counts, pending/failed remaps or retirements, Xid fields."""
    volatile = gpu["ecc_errors"]["volatile"]
    rows, pages = gpu["remapped_rows"] or {}, gpu["retired_pages"] or {}
    return bool(
        volatile["correctable"]
        or volatile["uncorrectable"]
        or rows.get("pending")
        or rows.get("failure")
        or pages.get("pending")
        or gpu["xid_errors"]
    )


def _peak(values):
    values = [value for value in values if value is not None]
    return max(values) if values else None


def _average(values):
    values = [value for value in values if value is not None]
    return round(sum(values) / len(values), 1) if values else None


def summarize_gpus(samples, xid_counts=None):
    """Summarize parse_nvidia_smi_xml results taken over time, per GPU (by PCI id) and overall.

    Per GPU: samples, product_name, memory_used_pct_peak/_avg, memory_used_mib_peak,
    utilization_gpu_pct_peak/_avg, temperature_c_peak, power_draw_w_peak, thermal_throttling,
    throttle_reasons_seen, ecc_{correctable,uncorrectable}_volatile_peak, ecc_aggregate_increase
    (last minus first sample: errors that happened between them), gpu_errors.
    Overall: the same peaks/averages over every GPU, plus xid_errors (from `xid_counts`, a
    xid_errors_from_kernel_log result) and gpu_errors, the report's "Any GPU errors".
    """
    samples = list(samples)
    if not samples:
        raise WorkshopError("No nvidia-smi samples to summarize: take at least one with `nvidia-smi -q -x`")
    per_gpu = {}
    for sample in samples:
        if not isinstance(sample, dict) or "gpus" not in sample:
            raise WorkshopError("A GPU sample is not a parse_nvidia_smi_xml result (no 'gpus')")
        for gpu in sample["gpus"]:
            per_gpu.setdefault(gpu["id"] or gpu["uuid"] or str(gpu["index"]), []).append(gpu)

    gpus = {}
    for key, readings in per_gpu.items():
        first, last = readings[0]["ecc_errors"]["aggregate"], readings[-1]["ecc_errors"]["aggregate"]
        increase = {
            kind: last[kind] - first[kind] if last[kind] is not None and first[kind] is not None else None
            for kind in ("correctable", "uncorrectable")
        }
        throttled = [gpu["thermal_throttling"] for gpu in readings]
        gpus[key] = {
            "product_name": readings[-1]["product_name"],
            "samples": len(readings),
            "memory_used_pct_peak": _peak(gpu["memory_used_pct"] for gpu in readings),
            "memory_used_pct_avg": _average(gpu["memory_used_pct"] for gpu in readings),
            "memory_used_mib_peak": _peak(gpu["memory_used_mib"] for gpu in readings),
            "utilization_gpu_pct_peak": _peak(gpu["utilization_gpu_pct"] for gpu in readings),
            "utilization_gpu_pct_avg": _average(gpu["utilization_gpu_pct"] for gpu in readings),
            "temperature_c_peak": _peak(gpu["temperature_c"] for gpu in readings),
            "power_draw_w_peak": _peak(gpu["power_draw_w"] for gpu in readings),
            "thermal_throttling": any(throttled) if any(flag is not None for flag in throttled) else None,
            "throttle_reasons_seen": sorted({name for gpu in readings for name in gpu["throttle_reasons_active"]}),
            "ecc_correctable_volatile_peak": _peak(gpu["ecc_errors"]["volatile"]["correctable"] for gpu in readings),
            "ecc_uncorrectable_volatile_peak": _peak(gpu["ecc_errors"]["volatile"]["uncorrectable"] for gpu in readings),
            "ecc_aggregate_increase": increase,
            "gpu_errors": any(_errors_in(gpu) for gpu in readings) or any(increase.values()),
        }

    every = [gpu for readings in per_gpu.values() for gpu in readings]
    xid_total = (xid_counts or {}).get("total", 0)
    throttled = [gpu["thermal_throttling"] for gpu in gpus.values()]
    return {
        "samples": len(samples),
        "gpus": gpus,
        "memory_used_pct_peak": _peak(gpu["memory_used_pct"] for gpu in every),
        "memory_used_pct_avg": _average(gpu["memory_used_pct"] for gpu in every),
        "temperature_c_peak": _peak(gpu["temperature_c"] for gpu in every),
        "thermal_throttling": any(throttled) if any(flag is not None for flag in throttled) else None,
        "ecc_errors": any(
            gpu["ecc_correctable_volatile_peak"]
            or gpu["ecc_uncorrectable_volatile_peak"]
            or any(gpu["ecc_aggregate_increase"].values())
            for gpu in gpus.values()
        ),
        "xid_errors": xid_total,
        "gpu_errors": any(gpu["gpu_errors"] for gpu in gpus.values()) or xid_total > 0,
    }
