#!/usr/bin/env python3
"""Checks the declared rust-version against every dependency built on this platform.

The toolchain on CI is the newest, so building does not prove the declared minimum. Two checks
together do: clippy's `incompatible_msrv` lint (on by default, CI denies warnings) flags any use
of a standard-library API newer than `rust-version` in our own code, and this script fails if any
crate in the resolved dependency graph declares a `rust-version` newer than ours. The workspace
uses resolver 3, so `cargo update` picks dependency versions that fit.
"""
import json
import subprocess
import sys


def parse(version):
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1",
         "--filter-platform", "x86_64-unknown-linux-gnu"]
    )
)
ours = {p["rust_version"] for p in meta["packages"] if p["source"] is None}
if len(ours) != 1 or None in ours:
    sys.exit(f"every workspace crate must declare the same rust-version, found {ours}")
msrv = ours.pop()
used = {node["id"] for node in meta["resolve"]["nodes"]}
too_new = sorted(
    f'{p["name"]} {p["version"]} needs Rust {p["rust_version"]}'
    for p in meta["packages"]
    if p["id"] in used and p.get("rust_version") and parse(p["rust_version"]) > parse(msrv)
)
if too_new:
    sys.exit(f"rust-version {msrv} is too old for:\n  " + "\n  ".join(too_new))
print(f"rust-version {msrv}: every dependency in the graph supports it")
