"""Unit tests of the GPU and log analysis helpers: no workshop, no GPU, no Docker needed."""

import gzip
import re
from pathlib import Path

import pytest
from ansible.module_utils.workshop_errors import WorkshopError
from ansible.module_utils.workshop_gpu import (
    XID_NOT_IN_XML,
    parse_nvidia_smi_xml,
    summarize_gpus,
    xid_errors_from_kernel_log,
)
from ansible.module_utils.workshop_loganalysis import CATEGORIES, analyze_log_dir, analyze_log_text

FIXTURES = Path(__file__).resolve().parent / "fixtures"
H100 = (FIXTURES / "nvidia-smi-h100.xml").read_text()
A100 = (FIXTURES / "nvidia-smi-a100-throttled.xml").read_text()


# --- nvidia-smi ---------------------------------------------------------------------------------


def test_h100_header():
    parsed = parse_nvidia_smi_xml(H100)
    assert parsed["timestamp"] == "Sat Jan 10 15:42:07 2026"
    assert parsed["driver_version"] == "535.154.05"
    assert parsed["cuda_version"] == "12.2"
    assert parsed["attached_gpus"] == 2
    assert [gpu["id"] for gpu in parsed["gpus"]] == ["00000000:18:00.0", "00000000:2A:00.0"]


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (
            0,
            dict(
                uuid="GPU-6f3a9c1e-2b7d-4e58-a1c0-93d4b7e2f815",
                memory_used_mib=58210,
                memory_free_mib=22770,
                memory_used_pct=round(58210 * 100 / 81559, 1),
                utilization_gpu_pct=87,
                utilization_memory_pct=41,
                temperature_c=64,
                memory_temperature_c=71,
                power_draw_w=512.37,
                sm_clock_mhz=1980,
                aggregate_correctable=0,
            ),
        ),
        (
            1,
            dict(
                uuid="GPU-a80d5e47-91c3-4f2b-8e6a-0c7d2f41b9e3",
                memory_used_mib=12044,
                memory_free_mib=68936,
                memory_used_pct=round(12044 * 100 / 81559, 1),
                utilization_gpu_pct=23,
                utilization_memory_pct=6,
                temperature_c=48,
                memory_temperature_c=53,
                power_draw_w=187.91,
                sm_clock_mhz=1755,
                aggregate_correctable=2,
            ),
        ),
    ],
)
def test_h100_gpus(index, expected):
    gpu = parse_nvidia_smi_xml(H100)["gpus"][index]
    expected = dict(expected)
    assert gpu["index"] == index
    assert gpu["product_name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["performance_state"] == "P0"
    assert gpu["memory_total_mib"] == 81559
    assert gpu["memory_reserved_mib"] == 579
    assert gpu["temperature_slowdown_c"] == 89
    assert gpu["temperature_shutdown_c"] == 92
    assert gpu["temperature_max_operating_c"] == 87
    assert gpu["temperature_tlimit_c"] is None
    assert gpu["power_limit_w"] == 700.0
    assert gpu["max_sm_clock_mhz"] == 1980
    assert gpu["throttle_reasons_element"] == "clocks_event_reasons"
    assert gpu["throttle_reasons"] == {
        name: False
        for name in (
            "gpu_idle",
            "applications_clocks_setting",
            "sw_power_cap",
            "hw_slowdown",
            "hw_thermal_slowdown",
            "hw_power_brake_slowdown",
            "sync_boost",
            "sw_thermal_slowdown",
            "display_clocks_setting",
        )
    }
    assert gpu["throttle_reasons_active"] == []
    assert gpu["thermal_throttling"] is False
    assert gpu["ecc_mode"] == "Enabled"
    volatile, aggregate = gpu["ecc_errors"]["volatile"], gpu["ecc_errors"]["aggregate"]
    assert (volatile["correctable"], volatile["uncorrectable"]) == (0, 0)
    assert volatile["detail"] == {
        "sram_correctable": 0,
        "sram_uncorrectable_parity": 0,
        "sram_uncorrectable_secded": 0,
        "dram_correctable": 0,
        "dram_uncorrectable": 0,
    }
    assert (aggregate["correctable"], aggregate["uncorrectable"]) == (expected.pop("aggregate_correctable"), 0)
    assert "sram_threshold_exceeded" not in aggregate["detail"]
    assert gpu["retired_pages"] is None  # every field N/A on HBM3 boards, which remap rows instead
    assert gpu["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False}
    assert gpu["xid_errors"] is None
    assert gpu["xid_note"] == XID_NOT_IN_XML
    for field, value in expected.items():
        assert gpu[field] == value, field


def test_a100_throttled():
    parsed = parse_nvidia_smi_xml(A100)
    assert (parsed["driver_version"], parsed["cuda_version"], parsed["attached_gpus"]) == ("470.182.03", "11.4", 1)
    [gpu] = parsed["gpus"]
    assert gpu["id"] == "00000000:07:00.0"
    assert gpu["uuid"] == "GPU-3c9e7b21-5d4f-6a08-b2e1-7f90c4d8a356"
    assert gpu["product_name"] == "NVIDIA A100-SXM4-80GB"
    assert (gpu["memory_total_mib"], gpu["memory_used_mib"], gpu["memory_free_mib"]) == (81251, 79877, 1374)
    assert gpu["memory_reserved_mib"] is None  # R470 does not report reserved memory
    assert gpu["memory_used_pct"] == round(79877 * 100 / 81251, 1) == 98.3
    assert (gpu["utilization_gpu_pct"], gpu["utilization_memory_pct"]) == (100, 78)
    assert (gpu["temperature_c"], gpu["memory_temperature_c"]) == (90, 93)
    assert (gpu["temperature_slowdown_c"], gpu["temperature_shutdown_c"], gpu["temperature_max_operating_c"]) == (89, 92, 85)
    assert (gpu["power_draw_w"], gpu["power_limit_w"]) == (331.42, 400.0)
    assert (gpu["sm_clock_mhz"], gpu["max_sm_clock_mhz"]) == (1095, 1410)
    assert gpu["throttle_reasons_element"] == "clocks_throttle_reasons"
    assert gpu["throttle_reasons_active"] == ["hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown"]
    assert gpu["throttle_reasons"]["sw_power_cap"] is False
    assert gpu["thermal_throttling"] is True
    assert gpu["ecc_errors"]["volatile"] == {
        "correctable": 9,
        "uncorrectable": 0,
        "detail": {"sram_correctable": 2, "sram_uncorrectable": 0, "dram_correctable": 7, "dram_uncorrectable": 0},
    }
    assert gpu["ecc_errors"]["aggregate"] == {
        "correctable": 27,
        "uncorrectable": 1,
        "detail": {"sram_correctable": 4, "sram_uncorrectable": 0, "dram_correctable": 23, "dram_uncorrectable": 1},
    }
    assert gpu["retired_pages"] is None
    assert gpu["remapped_rows"] == {"correctable": 0, "uncorrectable": 1, "pending": False, "failure": False}
    assert gpu["xid_errors"] is None


@pytest.mark.parametrize("reason", ["hw_thermal_slowdown", "sw_thermal_slowdown"])
def test_either_thermal_reason_means_throttling(reason):
    xml = H100.replace(f"<clocks_event_reason_{reason}>Not Active<", f"<clocks_event_reason_{reason}>Active<")
    gpus = parse_nvidia_smi_xml(xml)["gpus"]
    assert [gpu["thermal_throttling"] for gpu in gpus] == [True, True]
    assert gpus[0]["throttle_reasons_active"] == [reason]


def test_not_available_values_are_none():
    xml = H100.replace("<current_ecc>Enabled</current_ecc>", "<current_ecc>Disabled</current_ecc>")
    xml = re.sub(r"(<(?:sram|dram)_(?:un)?correctable(?:_parity|_secded)?>)0<", r"\1N/A<", xml)
    xml = re.sub(r"<dram_correctable>2<", "<dram_correctable>N/A<", xml)
    xml = xml.replace("<gpu_util>87 %</gpu_util>", "<gpu_util>[N/A]</gpu_util>")
    xml = re.sub(r"<clocks_event_reasons>.*?</clocks_event_reasons>", "", xml, flags=re.S)
    gpu = parse_nvidia_smi_xml(xml)["gpus"][0]
    assert gpu["ecc_mode"] == "Disabled"
    for kind in ("volatile", "aggregate"):
        assert gpu["ecc_errors"][kind]["correctable"] is None
        assert gpu["ecc_errors"][kind]["uncorrectable"] is None
    assert gpu["utilization_gpu_pct"] is None
    assert gpu["throttle_reasons"] == {}
    assert gpu["thermal_throttling"] is None


def test_xid_elements_are_reported_when_present():
    xml = H100.replace("<performance_state>P0</performance_state>", "<xid_errors><last_xid>79</last_xid></xid_errors>", 1)
    gpus = parse_nvidia_smi_xml(xml)["gpus"]
    assert gpus[0]["xid_errors"] == {"xid_errors": {"last_xid": "79"}}
    assert gpus[0]["xid_note"] is None
    assert gpus[1]["xid_errors"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("GPU 00000000:18:00.0\n    Product Name : NVIDIA H100", "not XML"),
        ("<nvidia_smi_log><driver_version>535</driver_version></nvidia_smi_log>", "no <gpu>"),
        ("<gpu_log><gpu/></gpu_log>", "root <gpu_log>"),
        (H100.replace("<gpu_util>87 %</gpu_util>", "<gpu_util>lots %</gpu_util>"), "utilization/gpu_util"),
    ],
)
def test_bad_nvidia_smi_output(text, message):
    with pytest.raises(WorkshopError, match=re.escape(message)):
        parse_nvidia_smi_xml(text)


def _h100_variant(used0, temp0, used1, temp1, util0=87):
    xml = H100.replace("<used>58210 MiB</used>", f"<used>{used0} MiB</used>").replace("<gpu_temp>64 C<", f"<gpu_temp>{temp0} C<")
    xml = xml.replace("<used>12044 MiB</used>", f"<used>{used1} MiB</used>").replace("<gpu_temp>48 C<", f"<gpu_temp>{temp1} C<")
    return parse_nvidia_smi_xml(xml.replace("<gpu_util>87 %<", f"<gpu_util>{util0} %<"))


def test_summarize_gpus_peaks_and_averages():
    readings = [(58210, 64, 12044, 48), (74000, 79, 30500, 55), (40100, 71, 66000, 61)]
    samples = [_h100_variant(*reading) for reading in readings]
    summary = summarize_gpus(samples)
    pct = [[round(used * 100 / 81559, 1) for used in (reading[0], reading[2])] for reading in readings]
    first = [row[0] for row in pct]
    second = [row[1] for row in pct]
    assert summary["samples"] == 3
    assert summary["gpus"]["00000000:18:00.0"]["samples"] == 3
    assert summary["gpus"]["00000000:18:00.0"]["memory_used_pct_peak"] == max(first)
    assert summary["gpus"]["00000000:18:00.0"]["memory_used_pct_avg"] == round(sum(first) / 3, 1)
    assert summary["gpus"]["00000000:18:00.0"]["memory_used_mib_peak"] == 74000
    assert summary["gpus"]["00000000:18:00.0"]["temperature_c_peak"] == 79
    assert summary["gpus"]["00000000:2A:00.0"]["memory_used_pct_peak"] == max(second)
    assert summary["gpus"]["00000000:2A:00.0"]["memory_used_pct_avg"] == round(sum(second) / 3, 1)
    assert summary["gpus"]["00000000:2A:00.0"]["temperature_c_peak"] == 61
    assert summary["memory_used_pct_peak"] == max(first + second)
    assert summary["memory_used_pct_avg"] == round(sum(first + second) / 6, 1)
    assert summary["temperature_c_peak"] == 79
    assert summary["thermal_throttling"] is False
    assert summary["ecc_errors"] is False
    assert summary["gpu_errors"] is False  # the second board's 2 aggregate errors predate the samples
    assert summary["gpus"]["00000000:2A:00.0"]["ecc_aggregate_increase"] == {"correctable": 0, "uncorrectable": 0}
    assert summary["xid_errors"] == 0


def test_summarize_gpus_sees_throttling_and_errors_in_any_sample():
    calm = _h100_variant(58210, 64, 12044, 48)
    hot = parse_nvidia_smi_xml(
        H100.replace(
            "<clocks_event_reason_hw_thermal_slowdown>Not Active<", "<clocks_event_reason_hw_thermal_slowdown>Active<", 1
        )
        .replace("<gpu_temp>64 C<", "<gpu_temp>88 C<")
        .replace("<dram_correctable>2</dram_correctable>", "<dram_correctable>5</dram_correctable>")
    )
    summary = summarize_gpus([calm, hot, calm])
    assert summary["thermal_throttling"] is True
    assert summary["gpus"]["00000000:18:00.0"]["thermal_throttling"] is True
    assert summary["gpus"]["00000000:18:00.0"]["throttle_reasons_seen"] == ["hw_thermal_slowdown"]
    assert summary["gpus"]["00000000:2A:00.0"]["thermal_throttling"] is False
    assert summary["temperature_c_peak"] == 88
    assert summary["gpus"]["00000000:18:00.0"]["power_draw_w_peak"] == 512.37
    # aggregate went 2 -> 5 -> 2 across the samples: last minus first is what the summary reports
    assert summary["gpus"]["00000000:2A:00.0"]["ecc_aggregate_increase"]["correctable"] == 0
    assert summarize_gpus([calm, hot])["gpus"]["00000000:2A:00.0"]["ecc_aggregate_increase"]["correctable"] == 3
    assert summarize_gpus([calm, hot])["gpu_errors"] is True


def test_summarize_gpus_volatile_ecc_and_xid():
    summary = summarize_gpus([parse_nvidia_smi_xml(A100)])
    gpu = summary["gpus"]["00000000:07:00.0"]
    assert (gpu["ecc_correctable_volatile_peak"], gpu["ecc_uncorrectable_volatile_peak"]) == (9, 0)
    assert summary["ecc_errors"] is True
    assert summary["gpu_errors"] is True
    clean = summarize_gpus([parse_nvidia_smi_xml(H100)], xid_counts=xid_errors_from_kernel_log(KERNEL_LOG))
    assert clean["ecc_errors"] is False
    assert clean["xid_errors"] == 4
    assert clean["gpu_errors"] is True


@pytest.mark.parametrize("samples", [[], [{"timestamp": "x"}]])
def test_summarize_gpus_rejects_bad_samples(samples):
    with pytest.raises(WorkshopError):
        summarize_gpus(samples)


KERNEL_LOG = """\
[ 8123.418812] NVRM: Xid (PCI:0000:18:00): 31, pid=2841, name=python3, Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS
[ 8123.418901] NVRM: Xid (PCI:0000:18:00): 13, pid=2841, name=python3, Graphics SM Warp Exception on (GPC 1, TPC 3, SM 0)
[ 9040.002117] nvidia-modeset: WARNING: GPU:0: Lost display notification
Jan 10 15:31:07 gpu-host kernel: NVRM: Xid (PCI:0000:2a:00): 79, pid=2907, name=python3, GPU has fallen off the bus.
Jan 10 15:31:09 gpu-host kernel: NVRM: Xid (PCI:0000:18:00): 31, pid=2841, name=python3, Ch 00000008, intr 00000000.
Jan 10 15:31:10 gpu-host kernel: NVRM: GPU at PCI:0000:2a:00: GPU-a80d5e47-91c3-4f2b-8e6a-0c7d2f41b9e3
"""


def test_xid_errors_from_kernel_log():
    xids = xid_errors_from_kernel_log(KERNEL_LOG)
    assert xids["total"] == 4
    assert xids["by_code"] == {13: 1, 31: 2, 79: 1}
    assert xids["by_device"] == {"0000:18:00": 3, "0000:2a:00": 1}
    assert xids["descriptions"][79] == "GPU has fallen off the bus"
    assert xid_errors_from_kernel_log("")["total"] == 0


# --- logs ---------------------------------------------------------------------------------------


def stamp(second):
    """An exported line's timestamp, `second` seconds after 14:00:00."""
    return f"2026-01-10T14:{second // 60:02d}:{second % 60:02d}.{second * 7919 % 10**9:09d}Z"


def python_line(second, level, message, name="worker"):
    return f"{stamp(second)} 2026-01-10 14:{second // 60:02d}:{second % 60:02d},123 - {name} - {level} - {message}"


def worker_lines():
    lines = [python_line(0, "INFO", "Worker worker-1 polling http://queue-manager:3000")]
    second = 1
    for n in range(7):  # 7 jobs processed: 5 complete, 2 fail
        lines.append(python_line(second, "INFO", f"Processing job job-{n} for user user00{n % 3 + 1}"))
        if n in (2, 5):
            lines.append(python_line(second + 1, "ERROR", f"Job job-{n} failed: Invalid prompt: node 12 has no input 'model'"))
        else:
            lines.append(python_line(second + 1, "INFO", f"Job job-{n} completed successfully"))
        second += 2
    lines += [
        python_line(
            20,
            "WARNING",
            "Connection refused or lost: queue manager at http://queue-manager:3000 ([Errno 111]); retrying in 0.5s",
        ),
        python_line(21, "INFO", "Processing job job-7 for user user004"),
        python_line(22, "WARNING", "Leaving job job-7 unfinished (metadata.staging.hang)"),
        python_line(30, "INFO", "Shutting down worker worker-1"),
        python_line(30, "INFO", "Total jobs completed: 5"),
        python_line(30, "INFO", "Total jobs failed: 2"),
        python_line(30, "INFO", "Uptime: 30s"),
    ]
    return lines


def queue_manager_lines():
    name = "queue_manager"
    return [
        python_line(0, "INFO", "Starting queue manager 1.0 (max queue depth 100, job timeout 3600s)", name),
        python_line(1, "INFO", "Job job-0 submitted by user user001", name),
        python_line(2, "WARNING", "Queue depth 90 of 100", name),
        python_line(3, "INFO", "Recorded job job-0 as completed", name),
        python_line(4, "WARNING", "Worker worker-2 heartbeat missing", name),
        python_line(5, "ERROR", "Cleanup of stale jobs failed", name),
        f"{stamp(5)} Traceback (most recent call last):",
        f'{stamp(5)}   File "/app/queue_manager.py", line 281, in cleanup_forever',
        f"{stamp(5)}     self.cleanup()",
        f"{stamp(5)} ConnectionResetError: [Errno 104] Connection reset by peer",
        python_line(6, "INFO", "Cleaned up 3 stale jobs", name),
        python_line(7, "INFO", "Cleaned up 0 stale jobs", name),
        python_line(8, "INFO", "Job job-8 failed with Job timeout exceeded", name),
        python_line(900, "INFO", "Starting queue manager 1.0 (max queue depth 100, job timeout 3600s)", name),
    ]


def redis_lines():
    return [
        f"{stamp(0)} 1:C 10 Jan 2026 14:00:00.001 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo",
        f"{stamp(0)} 1:M 10 Jan 2026 14:00:00.002 # WARNING Memory overcommit must be enabled!",
        f"{stamp(0)} 1:M 10 Jan 2026 14:00:00.003 * Ready to accept connections tcp",
        f"{stamp(40)} 1:M 10 Jan 2026 14:00:40.001 # Error accepting a client connection: Connection reset by peer",
        f"{stamp(50)} 1:signal-handler (1768053650) Received SIGTERM scheduling shutdown...",
        f"{stamp(52)} 1:C 10 Jan 2026 14:00:52.001 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo",
        f"{stamp(52)} 1:M 10 Jan 2026 14:00:52.004 * Ready to accept connections tcp",
    ]


def nginx_lines():
    return [
        f'{stamp(0)} 2026/01/10 14:00:00 [notice] 1#1: using the "epoll" event method',
        f'{stamp(3)} 203.0.113.7 - - [10/Jan/2026:14:00:03 +0000] "GET /api/queue/status HTTP/1.1" 200 131 "-" "curl/8.5.0"',
        f"{stamp(9)} 2026/01/10 14:00:09 [crit] 29#29: *117 SSL_do_handshake() failed"
        " (SSL: error:0A00006C:SSL routines::bad key share) while SSL handshaking, client: 203.0.113.9, server: 0.0.0.0:443",
        f"{stamp(12)} 2026/01/10 14:00:12 [warn] 29#29: *120 an upstream response is buffered to a temporary file",
        f"{stamp(15)} 2026/01/10 14:00:15 [error] 29#29: *131 upstream timed out (110: Connection timed out) while reading"
        ' response header from upstream, client: 203.0.113.7, upstream: "http://172.18.0.5:3000/api/jobs"',
    ]


def write_gz(folder, name, lines):
    with gzip.open(folder / name, "wt") as out:
        for line in lines:
            out.write(line + "\n")


@pytest.fixture
def log_dir(tmp_path):
    write_gz(tmp_path, "worker-1.log.gz", worker_lines())
    write_gz(tmp_path, "queue-manager.log.gz", queue_manager_lines())
    write_gz(tmp_path, "redis.log.gz", redis_lines())
    write_gz(tmp_path, "nginx.log.gz", nginx_lines())
    # The combined file is not a service's log: it must not be counted a second time.
    write_gz(tmp_path, "workshop-logs.txt.gz", [f"worker-1 | {line}" for line in worker_lines()])
    return tmp_path


EXPECTED = {
    "worker-1": dict(job_failures=2, warnings=2, connection=1, requeues=1),
    "queue-manager": dict(errors=1, warnings=2, connection=1, restarts=1, stale_jobs=3),
    "redis": dict(errors=1, warnings=1, connection=1, restarts=1),
    "nginx": dict(errors=2, warnings=1, ssl=1, connection=1),
}


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_log_counts_per_service(log_dir, service):
    result = analyze_log_dir(str(log_dir))
    assert sorted(result["services"]) == sorted(EXPECTED)
    counts = {category: entry["count"] for category, entry in result["services"][service].items()}
    assert counts == {category: EXPECTED[service].get(category, 0) for category in CATEGORIES}


def test_log_totals_and_lines(log_dir):
    result = analyze_log_dir(str(log_dir))
    assert result["totals"] == {category: sum(counts.get(category, 0) for counts in EXPECTED.values()) for category in CATEGORIES}
    assert result["lines"] == {"worker-1": 22, "queue-manager": 14, "redis": 7, "nginx": 5}


def test_log_samples_are_input_lines(log_dir):
    result = analyze_log_dir(str(log_dir), max_samples=1)
    inputs = {"worker-1": worker_lines(), "queue-manager": queue_manager_lines(), "redis": redis_lines(), "nginx": nginx_lines()}
    for service, categories in result["services"].items():
        for category, entry in categories.items():
            assert len(entry["samples"]) == min(entry["count"], 1), (service, category)
            assert all(sample in inputs[service] for sample in entry["samples"]), (service, category)
    services = result["services"]
    assert services["nginx"]["ssl"]["samples"] == [nginx_lines()[2]]
    assert services["queue-manager"]["stale_jobs"]["samples"] == [queue_manager_lines()[10]]
    # the connection issue of a logged exception is found in its traceback, and sampled from there
    assert services["queue-manager"]["connection"]["samples"] == [queue_manager_lines()[9]]
    assert services["redis"]["restarts"]["samples"] == [redis_lines()[5]]


def test_log_samples_are_limited(log_dir):
    result = analyze_log_dir(str(log_dir))
    failures = result["services"]["worker-1"]["job_failures"]
    assert failures["samples"] == [worker_lines()[6], worker_lines()[12]]
    assert analyze_log_dir(str(log_dir), max_samples=0)["services"]["worker-1"]["job_failures"] == {"count": 2, "samples": []}


def test_worker_jobs(log_dir):
    jobs = analyze_log_dir(str(log_dir))["worker_jobs"]
    assert (jobs["processed"], jobs["completed"], jobs["failed"]) == (8, 5, 2)
    assert jobs["job_ids"] == [f"job-{n}" for n in range(8)]
    assert jobs["unique_jobs"] == 8
    assert (jobs["reported_completed"], jobs["reported_failed"]) == (5, 2)
    assert list(jobs["per_service"]) == ["worker-1"]
    assert jobs["per_service"]["worker-1"]["shutdown_reports"] == 1


@pytest.mark.parametrize(
    ("line", "categories"),
    [
        (
            '{"timestamp": "2026-01-10 14:00:01,001", "name": "worker", "level": "ERROR", "message": "Job j1 failed: boom"}',
            {"job_failures"},
        ),
        # A job's out-of-memory is the job's failure: not an error of the worker, not a crash.
        (
            "2026-01-10 14:00:01,001 - worker - ERROR - Job j2 failed: CUDA out of memory. Tried to allocate 2.50 GiB",
            {"job_failures"},
        ),
        ('{"timestamp": "2026-01-10 14:00:01,001", "name": "worker", "level": "INFO", "message": "error budget fine"}', set()),
        ('{"level": "WARNING", "message": "Connection refused or lost: retrying in 1s"}', {"warnings", "connection", "requeues"}),
        ("2026-01-10 14:00:01,001 - worker - INFO - error in an INFO line is not an error", set()),
        ("2026-01-10 14:00:01,001 - worker - CRITICAL - GPU thermal event", {"errors", "thermal"}),
        ("ERROR:    Exception in ASGI application", {"errors"}),
        ('INFO:     172.18.0.7:51234 - "GET /health HTTP/1.1" 200 OK', set()),
        ("Killed", {"crashes"}),
        ("worker-2 exited: container crashed (exit code 137)", {"crashes"}),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", {"errors", "crashes"}),
        ("Job j3 requeued after worker-2 restarted", {"requeues", "restarts"}),
        ("ssl certificate verify failed: certificate has expired", {"ssl"}),
        ("TLS handshake completed", set()),
        ("Could not connect to Redis at redis:6379: Name or service not known", {"connection"}),
        ("warning: overheat protection engaged", {"warnings", "thermal"}),
    ],
)
def test_categories_of_one_line(line, categories):
    result = analyze_log_text([f"{stamp(1)} {line}"], "svc")
    assert {category for category, entry in result["categories"].items() if entry["count"]} == categories
    assert all(entry["count"] <= 1 for entry in result["categories"].values())


def test_uncaught_traceback_is_one_crash_and_one_error():
    lines = [
        "2026-01-10 14:00:00,000 - worker - INFO - Worker worker-1 polling http://queue-manager:3000",
        "Traceback (most recent call last):",
        '  File "/app/worker.py", line 195, in main',
        "    worker.run()",
        "KeyError: 'id'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "/app/worker.py", line 200, in <module>',
        "RuntimeError: worker exception while stopping",
        "2026-01-10 14:00:09,000 - worker - INFO - Worker worker-1 polling http://queue-manager:3000",
    ]
    result = analyze_log_text(lines, "worker-1", restart_gap=None)
    counts = {category: entry["count"] for category, entry in result["categories"].items() if entry["count"]}
    assert counts == {"errors": 1, "crashes": 1}
    assert result["categories"]["crashes"]["samples"] == ["Traceback (most recent call last):"]
    assert result["lines"] == 12


@pytest.mark.parametrize(("gap", "restarts"), [(300, 1), (600, 1), (601, 0), (None, 0)])
def test_restart_gap(gap, restarts):
    lines = [python_line(0, "INFO", "Worker worker-1 polling"), python_line(600, "INFO", "Worker worker-1 polling")]
    assert analyze_log_text(lines, "worker-1", restart_gap=gap)["categories"]["restarts"]["count"] == restarts


def test_worker_jobs_of_text_keep_a_set():
    lines = [python_line(1, "INFO", "Processing job a for user u1"), python_line(2, "INFO", "Processing job a for user u1")]
    jobs = analyze_log_text(lines, "worker-1")["worker_jobs"]
    assert jobs["processed"] == 2
    assert jobs["job_ids"] == {"a"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "No log folder"), ("empty", "No <service>.log.gz"), ("corrupt", "Cannot read")],
)
def test_log_dir_errors(tmp_path, setup, message):
    folder = tmp_path / "logs"
    if setup != "missing":
        folder.mkdir()
    if setup == "corrupt":
        (folder / "redis.log.gz").write_bytes(b"not gzip at all")
    with pytest.raises(WorkshopError, match=re.escape(message)):
        analyze_log_dir(str(folder))


def test_pre_ampere_ecc_layout_and_retired_pages():
    legacy = """<volatile>
				<single_bit><device_memory>3</device_memory><register_file>1</register_file><total>4</total></single_bit>
				<double_bit><device_memory>0</device_memory><register_file>0</register_file><total>0</total></double_bit>
			</volatile>"""
    xml = re.sub(r"<volatile>.*?</volatile>", legacy, A100, count=1, flags=re.S)
    xml = xml.replace(
        "<multiple_single_bit_retirement>\n\t\t\t\t<retired_count>N/A",
        "<multiple_single_bit_retirement>\n\t\t\t\t<retired_count>2",
    ).replace("<pending_retirement>N/A</pending_retirement>", "<pending_retirement>Yes</pending_retirement>")
    gpu = parse_nvidia_smi_xml(xml.encode())["gpus"][0]
    assert gpu["ecc_errors"]["volatile"]["correctable"] == 4
    assert gpu["ecc_errors"]["volatile"]["uncorrectable"] == 0
    assert gpu["retired_pages"] == {"single_bit_ecc": 2, "double_bit_ecc": None, "pending": True}
    assert summarize_gpus([parse_nvidia_smi_xml(xml)])["gpu_errors"] is True
