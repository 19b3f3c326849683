"""Offline mode: build the wheelhouse an air-gapped GPU cluster needs for one engine release.

On a machine with access to the package index (any OS, no GPU needed)::

    python -m moecompat.wheelhouse sglang 0.5.23 --dest wheelhouse-sglang-0.5.23 --python-version 3.12

downloads ``sglang==0.5.23``, moecompat and every dependency as wheels for the *cluster's*
Python and platform (``pip download --only-binary=:all: --python-version --platform
--implementation cp``), and writes ``README.md`` and ``manifest.json`` into the folder. Copy the
folder to the cluster and install with no network::

    pip install --no-index --find-links wheelhouse-sglang-0.5.23 sglang==0.5.23 moecompat

See ``docs/offline.md``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Sequence

from packaging.version import InvalidVersion, Version

from ._version import __version__
from .errors import InvalidInputError

__all__ = ["DEFAULT_PLATFORMS", "ENGINES", "build_wheelhouse", "main", "pip_download_argv"]

#: The engines the wheelhouse is meant for (any other project name is accepted too).
ENGINES = ("vllm", "sglang")
#: glibc-based x86_64 Linux, newest tag first: what engine and torch wheels are built for.
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PY = re.compile(r"^3\.\d{1,2}$")
_PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _check(engine: str, version: str, python_version: str, platforms: Sequence[str]) -> None:
    if not isinstance(engine, str) or not _NAME.match(engine):
        raise InvalidInputError("engine", f"a project name such as {' or '.join(ENGINES)}", repr(engine))
    try:
        Version(version)
    except (InvalidVersion, TypeError):
        raise InvalidInputError("version", "a release version such as 0.5.23", repr(version)) from None
    if not isinstance(python_version, str) or not _PY.match(python_version):
        raise InvalidInputError("python_version", "MAJOR.MINOR of the cluster's Python, e.g. '3.12'", repr(python_version))
    if isinstance(platforms, str) or not platforms or not all(isinstance(p, str) and p for p in platforms):
        raise InvalidInputError("platforms", "one or more platform tags, e.g. ('manylinux_2_28_x86_64',)", repr(platforms))


def pip_download_argv(
    requirements: Sequence[str],
    dest: str | pathlib.Path,
    python_version: str = "3.12",
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    pip_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The ``pip download`` command line that fetches ``requirements`` and all their
    dependencies as wheels for another interpreter (``python_version``, CPython, ``platforms``)."""
    argv = [python, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python_version,
            "--implementation", "cp"]
    for p in platforms:
        argv += ["--platform", p]
    return [*argv, *pip_args, "-d", str(dest), *requirements]


def _moecompat_requirement(dest: pathlib.Path, run: bool, python: str) -> tuple[str, list[list[str]]]:
    """What stands for moecompat in the download: a wheel built from this source tree (a
    checkout: pyproject.toml beside the package), else this release from the index."""
    if (_PROJECT_ROOT / "pyproject.toml").exists() and (_PROJECT_ROOT / "moecompat").is_dir():
        build = [python, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), str(_PROJECT_ROOT)]
        if run:
            subprocess.run(build, check=True)
            wheels = sorted(dest.glob(f"moecompat-{__version__}-*.whl"))
            if not wheels:
                raise FileNotFoundError(f"pip wheel wrote no moecompat-{__version__} wheel into {dest}")
            return str(wheels[-1]), [build]
        return str(dest / f"moecompat-{__version__}-py3-none-any.whl"), [build]
    return f"moecompat=={__version__}", []


def _manifest(dest: pathlib.Path, info: dict) -> dict:
    files = []
    for f in sorted(dest.iterdir()):
        if f.is_file() and f.name not in ("manifest.json", "README.md"):
            files.append({"name": f.name, "size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()})
    return {**info, "files": files}


def _readme(engine: str, version: str, python_version: str, platforms: Sequence[str], extra: Sequence[str], n_files: int,
            with_moecompat: bool = True) -> str:
    reqs = " ".join([f'"{engine}=={version}"', *(["moecompat"] if with_moecompat else []), *(f'"{e}"' for e in extra)])
    title = f"{engine} {version}" + (f" + moecompat {__version__}" if with_moecompat else "")
    return f"""# Offline wheelhouse: {title}

{n_files} wheel(s) for CPython {python_version} on {', '.join(platforms)}, written by
`python -m moecompat.wheelhouse` on {datetime.date.today().isoformat()} (the command and every file's sha256 are in
`manifest.json`).

Install on the air-gapped machine (same Python minor and platform), with no network:

```bash
python{python_version} -m venv .venv && . .venv/bin/activate
pip install --no-index --find-links "$PWD" {reqs}
moecompat doctor
```

(`$PWD` is this folder; give its path from anywhere else.) To check the engine's kernels on the
cluster's GPUs with moecompat's test suite, from a moecompat checkout:

```bash
MOECOMPAT_WHEELHOUSE=/path/to/this/folder MOECOMPAT_OFFLINE=1 nox -s gpu_{engine} -- {version}
```
"""


def build_wheelhouse(
    engine: str,
    version: str,
    dest: str | pathlib.Path,
    python_version: str = "3.12",
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    extra: Sequence[str] = (),
    *,
    with_moecompat: bool = True,
    pip_args: Sequence[str] = (),
    dry_run: bool = False,
) -> list[list[str]]:
    """Download ``engine==version``, moecompat and every dependency as wheels into ``dest``.

    Args:
        engine: the engine's project name (``"vllm"``, ``"sglang"``).
        version: the engine release, e.g. ``"0.5.23"``.
        dest: the wheelhouse folder (created).
        python_version: the cluster's Python, ``MAJOR.MINOR``.
        platforms: the cluster's platform tags (pip ``--platform``, each one accepted).
        extra: more requirements resolved together with the engine, e.g. ``"sglang[srt]==0.5.23"``
            or ``"torch==2.11.0"``.
        with_moecompat: also put moecompat (built from this checkout, else from the index) and its
            dependencies in.
        pip_args: more ``pip download`` options (``--index-url``, ``--find-links``, ...).
        dry_run: return the commands without running them or writing anything.

    Returns:
        The commands run (or that would run).

    Raises:
        InvalidInputError: a malformed engine name, version, Python version or platform list.
        subprocess.CalledProcessError: pip failed (its output says why: e.g. a requirement that
            has no wheel for the platform, only a source distribution).
    """
    _check(engine, version, python_version, platforms)
    dest = pathlib.Path(dest)
    python = sys.executable
    requirements = [f"{engine}=={version}", *extra]
    commands: list[list[str]] = []
    if not dry_run:
        dest.mkdir(parents=True, exist_ok=True)
    if with_moecompat:
        req, builds = _moecompat_requirement(dest, not dry_run, python)
        requirements.append(req)
        commands += builds
    download = pip_download_argv(requirements, dest, python_version, platforms, pip_args, python)
    commands.append(download)
    if dry_run:
        return commands
    subprocess.run(download, check=True)
    info = {"engine": engine, "version": version, "moecompat": __version__ if with_moecompat else None,
            "python_version": python_version, "implementation": "cp", "platforms": list(platforms),
            "requirements": requirements, "extra": list(extra), "commands": commands,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    manifest = _manifest(dest, info)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (dest / "README.md").write_text(_readme(engine, version, python_version, platforms, extra, len(manifest["files"]),
                                            with_moecompat))
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moecompat.wheelhouse",
        description="Build the wheelhouse an air-gapped machine needs for one engine release and moecompat.")
    parser.add_argument("engine", help="vllm or sglang (any project name is accepted)")
    parser.add_argument("version", help="the engine release, e.g. 0.5.23")
    parser.add_argument("--dest", help="the wheelhouse folder (default: wheelhouse/ENGINE-VERSION-pyPYTHON)")
    parser.add_argument("--python-version", default="3.12", help="the cluster's Python, MAJOR.MINOR (default 3.12)")
    parser.add_argument("--platform", action="append", dest="platforms", metavar="TAG",
                        help=f"a platform tag of the cluster, repeatable (default: {' '.join(DEFAULT_PLATFORMS)})")
    parser.add_argument("--extra", action="append", default=[], metavar="REQ",
                        help="one more requirement resolved with the engine, repeatable (e.g. 'sglang[srt]==VERSION' or a torch pin)")
    parser.add_argument("--no-moecompat", action="store_true", help="leave moecompat out")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    dest = args.dest or f"wheelhouse/{args.engine}-{args.version}-py{args.python_version}"
    try:
        commands = build_wheelhouse(args.engine, args.version, dest, args.python_version,
                                    tuple(args.platforms or DEFAULT_PLATFORMS), tuple(args.extra),
                                    with_moecompat=not args.no_moecompat, dry_run=args.dry_run)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(map(str, exc.cmd))} exited with {exc.returncode}", file=sys.stderr)
        return 1
    if args.dry_run:
        import shlex

        for c in commands:
            print(shlex.join(c))
        return 0
    print(f"wrote {dest} (install offline: pip install --no-index --find-links {dest} {args.engine}=={args.version}"
          f"{'' if args.no_moecompat else ' moecompat'}; see {dest}/README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
