"""Issue 14's speed work: the faster paths compute exactly what the plain ones did, and take them.

How much faster is measured by bench/ (make bench), side by side with the code before: not here, where
the machine is shared and a timed assertion would only be noise."""

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from ansible.module_utils import workshop_metrics
from ansible.module_utils.workshop_metrics import (
    _figures,
    _merged,
    _parse_records,
    _tally,
    batch_sizes,
    compute_metrics,
    drain,
    durations,
    failures,
    job_counts,
    job_facts,
    job_times,
    models,
    participants,
    queue_depth,
    records,
    resolutions,
    run_times,
    timeline,
    waits,
)
from ansible.module_utils.workshop_time import parse_time

T0 = datetime(2026, 1, 28, 13, 0, tzinfo=timezone.utc)
USERS = [f"user{n:03d}" for n in range(1, 9)]
LOADERS = [
    {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}},
    {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a.safetensors", "clip_name2": "a.safetensors"}},
    },
    {"1": {"class_type": "LTXAVTextEncoderLoader", "inputs": {"text_encoder": "gemma.safetensors"}}},
    {"1": {"class_type": "KSampler", "inputs": {"ckpt_name": "odd-place.safetensors", "model_name": "not-a-loader"}}},
    "not a workflow",
    None,
]


def stamp(rng, seconds, platform=False):
    """A time the ways records write it: the platform's Z, an offset, naive, 3 or 9 digits, or unreadable."""
    when = T0 + timedelta(seconds=seconds, microseconds=rng.choice([0, rng.randrange(10**6)]))
    if platform:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return rng.choice(
        [
            when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            when.isoformat(),
            when.astimezone(timezone(timedelta(hours=2))).isoformat(),
            when.replace(tzinfo=None).isoformat(),
            when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
            "not a time",
        ]
    )


PROMPT_NODES = {
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a quiet lake at sunset", "clip": ["1", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
    "8": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7.0, "model": ["1", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def history(seed, count, platform=False):
    """Random job records, ties and odd values included; with platform, as the platform writes them
    (its Z times, API-format workflows the size of its example)."""
    rng = random.Random(seed)
    jobs = []
    for number in range(count):
        created = rng.randrange(0, 3600)
        status = rng.choice(["completed"] * 5 + ["failed", "cancelled", "pending", "running"])
        started = None if status == "pending" or rng.random() < 0.05 else created + rng.choice([0, rng.randrange(600)])
        completed = None if status in ("pending", "running") else (started or created) + rng.randrange(-5, 300)
        workflow = json.loads(json.dumps(rng.choice(LOADERS[:3] if platform else LOADERS)))
        if platform:
            workflow.update(json.loads(json.dumps(PROMPT_NODES)))
        if isinstance(workflow, dict):
            latent = rng.choice(["EmptyLatentImage", "EmptyFlux2LatentImage", "NotALatent"])
            width = rng.choice([512, 1024, 1024.0, "1024", ["4", 0]])
            workflow["5"] = {"class_type": latent, "inputs": {"width": width, "height": 768, "batch_size": rng.choice([1, 2, 4])}}
        jobs.append(
            {
                "id": f"j{number:05d}",
                "user_id": rng.choice([*USERS, "guest"]),
                "workflow": workflow,
                "status": status,
                "created_at": stamp(rng, created, platform) if rng.random() > 0.02 else None,
                "started_at": stamp(rng, started, platform) if started is not None else None,
                "completed_at": stamp(rng, completed, platform) if completed is not None else None,
                "error": rng.choice(["CUDA out of memory", "CUDA  out of\nmemory", None, {"code": 7}])
                if status == "failed"
                else None,
            }
        )
    jobs.append({"id": "bad", "status": "completed"})  # no user_id: counted as invalid
    return jobs


def one_by_one(jobs, users, cutoff, final_time):
    """The figures as each function defines them, one function after another (what compute_metrics was)."""
    jobs, read = records(jobs)
    times, facts = job_times(jobs), job_facts(jobs)
    return {
        "records": read,
        "jobs": job_counts(jobs),
        "durations": durations(jobs, times),
        "duration_seconds": run_times(jobs, times),
        "wait": waits(jobs, times),
        "queue_depth": queue_depth(jobs, times),
        "timeline": timeline(jobs, times),
        "drain": drain(cutoff, final_time),
        "participants": participants(jobs, users),
        "failures": failures(jobs),
        "models": models(jobs, facts),
        "resolutions": resolutions(jobs, facts),
        "batch_sizes": batch_sizes(jobs, facts),
    }


def one_by_one_gc_paused(*args):
    """one_by_one as compute_metrics runs, with the cyclic GC paused (which alone makes it about twice as fast)."""
    with workshop_metrics._gc_paused():
        return one_by_one(*args)


@pytest.mark.parametrize(("seed", "platform"), [(1, False), (2, False), (3, False), (4, True)])
def test_the_one_pass_metrics_equal_the_figures_one_by_one(seed, platform):
    jobs = history(seed, 600, platform)
    fused = compute_metrics(jobs, USERS, "2026-01-28T13:30:00Z", "2026-01-28T14:10:00.5Z")
    assert json.dumps(fused, sort_keys=True) == json.dumps(
        one_by_one(jobs, USERS, "2026-01-28T13:30:00Z", "2026-01-28T14:10:00.5Z"), sort_keys=True
    )
    assert fused["records"]["invalid"] == 1 and fused["jobs"]["submitted"] == 600


@pytest.mark.parametrize(("seed", "platform"), [(5, False), (6, False), (7, True)])
def test_tallies_of_consecutive_runs_of_jobs_merge_into_the_metrics_of_all(seed, platform):
    """What redis_metrics does with its processes' shares: equal to the one pass over every job, an empty share too."""
    jobs = history(seed, 600, platform)
    valid, read = records(jobs)
    cuts = sorted(random.Random(seed).sample(range(1, len(valid)), 3))
    runs = [valid[start:end] for start, end in zip([0, *cuts], [*cuts, len(valid)], strict=True)] + [[]]
    merged = _figures(_merged([_tally(run) for run in runs]), read, USERS, "2026-01-28T13:30:00Z", None)
    assert json.dumps(merged, sort_keys=True) == json.dumps(
        compute_metrics(jobs, USERS, "2026-01-28T13:30:00Z", None), sort_keys=True
    )


def test_merged_tallies_name_the_first_of_equally_long_jobs_and_count_a_shared_instant_once():
    def job(job_id, created, started, completed):
        return {
            "id": job_id,
            "user_id": "user001",
            "status": "completed",
            "created_at": f"2026-01-28T13:00:{created:02d}Z",
            "started_at": f"2026-01-28T13:00:{started:02d}Z",
            "completed_at": f"2026-01-28T13:00:{completed:02d}Z",
        }

    first, second = job("first", 0, 5, 15), job("second", 0, 9, 19)  # both run 10 s, both created at :00
    merged = _figures(_merged([_tally([first]), _tally([second])]), records([first, second])[1], [], None, None)
    assert merged == compute_metrics([first, second], [])
    assert merged["durations"]["max_job_id"] == "first" and merged["wait"]["max_job_id"] == "second"
    assert merged["queue_depth"]["series"][0] == ["2026-01-28T13:00:00+00:00", 2]


def test_the_platform_times_take_the_fast_path_and_read_the_same():
    rng = random.Random(3)
    for _dummy in range(2000):
        text = stamp(rng, rng.randrange(86400))
        moment = parse_time(text)
        if text == "not a time":
            assert moment is None
            continue
        fixed = text[:-1] + "+00:00" if text.endswith("Z") else text
        if "." in fixed and len(fixed.split(".")[1].split("+")[0]) == 9:
            fixed = fixed.replace("123+", "+")  # 9 digits: Python reads 6
        expected = datetime.fromisoformat(fixed)
        expected = expected.replace(tzinfo=timezone.utc) if expected.tzinfo is None else expected.astimezone(timezone.utc)
        assert moment == expected and moment.tzinfo is timezone.utc, text


class CountingLoads:
    def __init__(self, loads):
        self.loads, self.calls = loads, 0

    def __call__(self, raw):
        self.calls += 1
        return self.loads(raw)


def test_records_parse_with_the_fast_parser_and_fall_back_to_json_for_what_it_refuses():
    """orjson (when installed) reads the records; what it refuses and json reads (NaN, huge integers) still counts."""
    pairs = [
        (b"job:a", b'{"user_id": "user001", "status": "completed", "n": 1}'),
        (b"job:b", b'{"user_id": "user002", "status": "failed", "score": NaN}'),
        (b"job:c", b'{"user_id": "user003", "status": "running", "big": 123456789012345678901234567890}'),
        (b"job:d", b"not json"),
        (b"job:e", None),
    ]
    strict = CountingLoads(lambda raw: json.loads(raw, parse_constant=_refuse, parse_int=_small_int))
    fast = _parse_records(pairs, fast=strict)
    plain = _parse_records(pairs, fast=None)
    assert strict.calls == 4
    assert json.dumps(fast.jobs) == json.dumps(plain.jobs)
    assert [job["user_id"] for job in fast.jobs] == ["user001", "user002", "user003"]
    assert fast.jobs[2]["big"] == 123456789012345678901234567890
    assert fast.invalid == plain.invalid == [b"job:d"]


def _refuse(name):
    raise ValueError(f"{name} refused")


def _small_int(text):
    if abs(int(text)) >= 2**63:
        raise ValueError("beyond 64 bits")
    return int(text)


def test_records_read_by_orjson_where_it_is_installed():
    orjson = pytest.importorskip("orjson")
    assert workshop_metrics._fast_loads is orjson.loads


# --- the backup: one read from disk ---------------------------------------------------------------


@pytest.fixture
def fadvise_calls(monkeypatch):
    """Every posix_fadvise(DONTNEED) call, as (file name, offset, length) (the real call still runs)."""
    import os

    calls, real = [], os.posix_fadvise

    def recording(fd, offset, length, advice):
        if advice == os.POSIX_FADV_DONTNEED:
            calls.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    return calls


def test_the_archive_is_read_back_from_disk_not_the_page_cache(tmp_path, fadvise_calls):
    from ansible.module_utils.workshop_backup import write_archive

    source = tmp_path / "outputs"
    (source / "user001").mkdir(parents=True)
    (source / "user001" / "a.png").write_bytes(random.Random(1).randbytes(300_000))
    write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(source)})
    assert fadvise_calls == [("outputs.tar.partial", 0, 0)]


def test_a_big_archive_is_written_out_and_read_back_a_stretch_at_a_time(tmp_path, fadvise_calls, monkeypatch):
    """While the tar is written, each DROP_BEHIND stretch goes out to disk; the read-back drops the whole
    file, then what it has read behind it, and still checks every member."""
    from ansible.module_utils import workshop_backup

    monkeypatch.setattr(workshop_backup, "DROP_BEHIND", 100_000)
    source = tmp_path / "outputs"
    rng = random.Random(3)
    for number in range(6):
        (source / f"user00{number}").mkdir(parents=True)
        (source / f"user00{number}" / "a.png").write_bytes(rng.randbytes(60_000))
    members, _ = workshop_backup.write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(source)})
    size = (tmp_path / "outputs.tar").stat().st_size
    calls = [(offset, length) for name, offset, length in fadvise_calls if name == "outputs.tar.partial"]
    read_back = calls.index((0, 0))
    written, read = calls[:read_back], calls[read_back + 1 :]
    assert len(written) >= 2 and len(read) >= 2
    for stretches in (written, read):
        # Contiguous from the start, each at least DROP_BEHIND long, never past the end.
        assert [offset for offset, _length in stretches] == [0] + [offset + length for offset, length in stretches[:-1]]
        assert all(length >= 100_000 for _offset, length in stretches)
        assert stretches[-1][0] + stretches[-1][1] <= size
    assert workshop_backup.archive_failures(str(tmp_path / "outputs.tar"), members) == []


def test_the_kernel_reads_the_next_file_while_one_is_archived(tmp_path, monkeypatch):
    """Before each file is archived, the next one is asked for (posix_fadvise WILLNEED); links are not."""
    import os

    from ansible.module_utils import workshop_backup

    asked, real = [], os.posix_fadvise

    def recording(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            asked.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, length))
        return real(fd, offset, length, advice)

    source = tmp_path / "outputs" / "user001"
    source.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        (source / name).write_bytes(random.Random(name).randbytes(10_000))
    (source / "d.png").symlink_to("a.png")
    real_add = workshop_backup._add_file
    archived = []

    def adding(tar, raw, entry, arcname):
        archived.append((entry.relpath, list(asked)))
        return real_add(tar, raw, entry, arcname)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    monkeypatch.setattr(workshop_backup, "_add_file", adding)
    workshop_backup.write_archive(str(tmp_path / "outputs.tar"), {"outputs": str(tmp_path / "outputs")})
    ahead = workshop_backup.READ_AHEAD
    assert archived == [
        ("user001/a.png", [("b.png", 0, ahead)]),
        ("user001/b.png", [("b.png", 0, ahead), ("c.png", 0, ahead)]),
        ("user001/c.png", [("b.png", 0, ahead), ("c.png", 0, ahead)]),
    ]


def test_sha256_hands_big_blocks_to_a_thread_and_equals_hashlib(monkeypatch):
    import hashlib

    from ansible.module_utils import workshop_files

    submitted = []
    real = workshop_files._hashing_threads()

    class Counting:
        def submit(self, function, block):
            submitted.append(len(block))
            return real.submit(function, block)

    monkeypatch.setattr(workshop_files, "_hashing_threads", Counting)
    rng = random.Random(4)
    blocks = [rng.randbytes(size) for size in (10, 1 << 20, 100, 300_000, 0, 1 << 16, 5)]
    digest = workshop_files.Sha256()
    for block in blocks:
        digest.update(block)
    assert digest.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()
    assert submitted == [1 << 20, 300_000, 1 << 16]


def test_sealing_reads_each_archive_once_and_still_names_a_damaged_member(tmp_path, monkeypatch):
    """One read gives the manifest its sha256 and checks every member; a member changed on disk still fails the seal."""
    import hashlib

    from ansible.module_utils import workshop_backup
    from ansible.module_utils.workshop_backup import seal, verify_folder, write_archive, write_members
    from ansible.module_utils.workshop_errors import WorkshopError

    source = tmp_path / "outputs"
    rng = random.Random(2)
    for user in ("user001", "user002"):
        (source / user).mkdir(parents=True)
        (source / user / "img.png").write_bytes(rng.randbytes(200_000))
    partial, final = tmp_path / ".partial-backup-x", tmp_path / "backup-x"
    partial.mkdir()
    members, _ = write_archive(str(partial / "outputs.tar"), {"outputs": str(source)})
    write_members(str(partial / "outputs.tar"), members)
    opened = []
    real = workshop_backup.DiskReader.__init__

    def counting(self, path, whole_file=True):
        opened.append(path)
        real(self, path, whole_file)

    monkeypatch.setattr(workshop_backup.DiskReader, "__init__", counting)
    manifest = seal(str(partial), str(final), {"workshop_id": "t"}).manifest
    assert sorted(opened) == sorted(str(partial / name) for name in ("outputs.tar", "outputs.tar.members.json"))
    tar = (final / "outputs.tar").read_bytes()
    assert manifest["files"]["outputs.tar"] == {"size": len(tar), "sha256": hashlib.sha256(tar).hexdigest()}
    assert verify_folder(str(final)) == []

    # The same folder again, one byte of user002's image flipped on disk before sealing.
    partial2 = tmp_path / ".partial-backup-y"
    partial2.mkdir()
    members, _ = write_archive(str(partial2 / "outputs.tar"), {"outputs": str(source)})
    write_members(str(partial2 / "outputs.tar"), members)
    data = bytearray((partial2 / "outputs.tar").read_bytes())
    at = data.rindex((source / "user002" / "img.png").read_bytes()[:64])
    data[at + 100] ^= 1
    (partial2 / "outputs.tar").write_bytes(bytes(data))
    with pytest.raises(WorkshopError) as caught:
        seal(str(partial2), str(tmp_path / "backup-y"), {"workshop_id": "t"})
    assert caught.value.context["failures"] == [
        {"file": "outputs.tar", "member": "outputs/user002/img.png", "reason": "content differs from the manifest"}
    ]
    assert not (tmp_path / "backup-y").exists()
