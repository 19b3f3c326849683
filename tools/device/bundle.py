#!/usr/bin/env python3
"""Pack several engine releases for the GPU machine, deduplicated, in parts of one call each.

The device takes at most 64 MiB a call (working tree included) and has no network, and the
releases of one engine share most of their bytes. Here::

    python3 tools/device/bundle.py OUT REL_DIR [REL_DIR ...]

Each ``REL_DIR`` (``.gpu/rel/<engine>-<version>/``) holds ``site/`` (what goes first on
``PYTHONPATH``: the unzipped engine wheel, stripped), ``wheels/`` (the dependencies the device
lacks, installed there with ``pip --no-deps --target``), a one-line ``engine`` file (``vllm`` or
``sglang``) and optionally ``env`` (``KEY=VALUE`` lines for the suite; ``{rel}`` is the release's
folder there, ``$VAR`` the device's value).

Every file is stored once by content (sha256). A file whose path and size match a file of an
earlier release but whose bytes differ (vLLM's ``_vllm_fa3_C`` differs in 75 kB of 153 MB from
one release to the next) is stored as the XOR against that one, which compresses to almost
nothing. Blobs are xz-compressed, split where one is larger than a part, and placed release by
release into ``OUT/001``, ``OUT/002``, ... (under 58 MiB each), so that the first release is
complete after the fewest calls. Every part carries the whole ``manifest.json``; on the device
``tools/device/matrix.py`` materialises each release once all its blobs have arrived.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import pathlib
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor

PART = 57 * 2**20  # the working tree (about 5 MiB) travels too, within 64 MiB a call
MANIFEST_MARGIN = 8192  # bytes: what the compressed manifest may grow by when the cut fills in its numbers


def _sha(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equally long byte strings (as one big integer: no numpy needed)."""
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _cached(cache: pathlib.Path, sha: str, base: str | None) -> pathlib.Path:
    """Where the compressed blob lies: the file's own bytes, or its XOR against ``base``."""
    return cache / (f"{sha}.xor-{base[:16]}.xz" if base else f"{sha}.xz")


def _compress(job: tuple[str, str | None, str]) -> tuple[str, bytes]:  # in a worker process
    """(sha, path of the XOR base or None, path) -> (sha, xz bytes of the file or of its XOR)."""
    sha, base, path = job
    data = pathlib.Path(path).read_bytes()
    if base is not None:
        data = xor(data, pathlib.Path(base).read_bytes())
    return sha, lzma.compress(data, preset=6)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    out = pathlib.Path(argv[0])
    rels = [pathlib.Path(r) for r in argv[1:]]
    manifest: dict = {"bundle": out.name, "releases": [], "blobs": {}}
    by_sha: dict[str, pathlib.Path] = {}  # first file seen with this content
    by_path_size: dict[tuple[str, int], str] = {}  # (relative path, size) -> sha of the earliest such file
    order: list[str] = []  # blob shas, first use first
    jobs: dict[str, tuple[str, str | None, str]] = {}
    for rel in rels:
        files = []
        for p in sorted(rel.rglob("*")):
            if not p.is_file() or p.is_symlink():
                continue
            rp = p.relative_to(rel).as_posix()
            size = p.stat().st_size
            sha = _sha(p)
            files.append([rp, sha, p.stat().st_mode & 0o777])
            if sha in by_sha:
                continue
            by_sha[sha] = p
            base = by_path_size.get((rp, size))
            jobs[sha] = (sha, str(by_sha[base]) if base else None, str(p))
            manifest["blobs"][sha] = {"size": size, "xor": base}
            by_path_size.setdefault((rp, size), sha)
            order.append(sha)
        manifest["releases"].append({
            "name": rel.name,
            "engine": (rel / "engine").read_text().strip(),
            "files": files,
        })
    # Compressed blobs are kept beside OUT, so that repacking (other releases, other order) is quick.
    cache = pathlib.Path(os.environ.get("BUNDLE_CACHE") or out.parent / (out.name + ".blobs"))
    cache.mkdir(parents=True, exist_ok=True)
    def cached(sha: str) -> pathlib.Path:
        return _cached(cache, sha, manifest["blobs"][sha]["xor"])

    todo = [jobs[s] for s in order if not cached(s).exists()]
    print(f"{len(order)} unique blobs, {len(todo)} to compress, on {os.cpu_count()} cores", flush=True)
    with ProcessPoolExecutor() as pool:
        for sha, data in pool.map(_compress, todo, chunksize=4):
            cached(sha).write_bytes(data)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # One stream, release by release, cut into parts: a blob that crosses a cut is split there.
    # Every part carries the manifest, so its room is reserved first, with placeholders for the
    # fields the cut fills in (22204 blobs' "chunks" alone compress to more than the margin).
    for meta in manifest["blobs"].values():
        meta["chunks"] = 1
    for r in manifest["releases"]:
        r["complete_after_part"] = 1
    text = lzma.compress(json.dumps(manifest).encode(), preset=6)
    room0 = (PART - len(text) - MANIFEST_MARGIN) // 4096 * 4096
    chunks_of: dict[str, list[int]] = {}
    parts: list[list[tuple[str, int, int]]] = [[]]  # (sha, chunk index, offset)
    room = room0
    for sha in order:
        n = cached(sha).stat().st_size
        off, k = 0, 0
        chunks_of[sha] = []
        while True:
            if room == 0:
                parts.append([])
                room = room0
            size = min(room, n - off)
            parts[-1].append((sha, k, off))
            chunks_of[sha].append(size)
            room -= -(-size // 4096) * 4096  # the device counts disk blocks, not bytes
            room = max(room, 0)
            off += size
            k += 1
            if off >= n:
                break
        manifest["blobs"][sha]["chunks"] = k
    where = {(sha, k): i + 1 for i, part in enumerate(parts) for sha, k, _ in part}
    for r in manifest["releases"]:
        r["complete_after_part"] = max(where[(s, k)] for _, s, _ in r["files"]
                                       for k in range(manifest["blobs"][s]["chunks"]))
    text = lzma.compress(json.dumps(manifest).encode(), preset=6)
    assert len(text) <= PART - room0
    for i, part in enumerate(parts):
        d = out / f"{i + 1:03d}"
        d.mkdir()
        for sha, k, off in part:
            with open(cached(sha), "rb") as fh:
                fh.seek(off)
                (d / f"{out.name}-{sha}.xz.{k:03d}").write_bytes(fh.read(chunks_of[sha][k]))
        (d / "manifest.json.xz").write_bytes(text)
    total = sum(sum(c) for c in chunks_of.values())
    print(f"{total / 2**20:.1f} MiB compressed in {len(parts)} parts under {out}")
    for r in manifest["releases"]:
        print(f"  {r['name']}: {len(r['files'])} files, complete after part {r['complete_after_part']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
