#!/usr/bin/env python3
"""Write incompressible PNG/MP4-like output files into data/outputs/<user>/.

Benchmarks need a few GB of outputs shaped like a workshop's: mostly images of a few MB and
some videos of tens of MB, which, like real PNG and MP4, do not compress. Each file starts
with the real signature of its format, followed by random bytes.
"""

import argparse
import os
import random

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MP4_HEADER = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
CHUNK = 1 << 20


def write_file(path, header, size):
    """Write header + random bytes to a temporary name, then rename: no partial file remains."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as out:
        out.write(header)
        left = size - len(header)
        while left > 0:
            out.write(os.urandom(min(CHUNK, left)))
            left -= CHUNK
    os.replace(tmp, path)


def plan(megabytes, users, seed):
    """Yield (user, kind, size) until `megabytes` are planned: 1 video for every 8 images."""
    rng = random.Random(seed)
    budget = megabytes << 20
    while budget > 0:
        user = f"user{rng.randint(1, users):03d}"
        if rng.random() < 1 / 9:
            kind, size = "mp4", rng.randint(20 << 20, 60 << 20)
        else:
            kind, size = "png", rng.randint(1 << 20, 6 << 20)
        size = min(size, budget)
        budget -= size
        yield user, kind, size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", help="the workshop's data/outputs folder")
    parser.add_argument("--megabytes", type=int, required=True)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    count = 0
    for user, kind, size in plan(args.megabytes, args.users, args.seed):
        folder = os.path.join(args.outputs, user)
        os.makedirs(folder, exist_ok=True)
        count += 1
        header = PNG_SIGNATURE if kind == "png" else MP4_HEADER
        write_file(os.path.join(folder, f"Workshop_{count:05d}_.{kind}"), header, size)
    print(f"wrote {count} files, {args.megabytes} MB, under {args.outputs}")


if __name__ == "__main__":
    main()
