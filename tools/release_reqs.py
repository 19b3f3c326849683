"""What an engine release itself asks for, read from its wheel's METADATA (used by noxfile.py).

The CPU matrix installs some releases with their *own* requirements instead of a frozen list:
the ``Requires-Dist`` lines of the release's wheel, the extras a user would install (``srt``),
the release's own torch pin, and the wheel's build date (so unpinned requirements resolve as
they did when the release came out: ``pip install --uploaded-prior-to``).

    python tools/release_reqs.py WHEEL [EXTRA ...]    # print the derived requirements
"""

from __future__ import annotations

import datetime
import email.message
import email.parser
import pathlib
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping

from packaging.markers import default_environment
from packaging.requirements import Requirement


def normalize(name: str) -> str:
    """PEP 503 normalized project (or extra) name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _metadata_entry(z: zipfile.ZipFile) -> zipfile.ZipInfo:
    entries = [i for i in z.infolist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", i.filename)]
    if len(entries) != 1:
        raise ValueError(f"{z.filename}: expected one *.dist-info/METADATA, found {len(entries)}")
    return entries[0]


def wheel_metadata(wheel: str | pathlib.Path) -> email.message.Message:
    """The parsed ``METADATA`` of a wheel file."""
    with zipfile.ZipFile(wheel) as z:
        return email.parser.BytesParser().parsebytes(z.read(_metadata_entry(z)), headersonly=True)


def requires_dist(wheel: str | pathlib.Path) -> list[str]:
    """The wheel's ``Requires-Dist`` lines, as written."""
    return list(wheel_metadata(wheel).get_all("Requires-Dist") or [])


def build_date(wheel: str | pathlib.Path) -> datetime.datetime:
    """When the wheel was built: the timestamp of its METADATA entry (UTC, as zip stores it).

    A release's wheel is built minutes before it is uploaded, so this dates the release."""
    with zipfile.ZipFile(wheel) as z:
        return datetime.datetime(*_metadata_entry(z).date_time, tzinfo=datetime.timezone.utc)


def release_requirements(
    name: str,
    lines: Iterable[str],
    extras: Iterable[str] = (),
    exclude: Iterable[str] = (),
    environment: Mapping[str, str] | None = None,
) -> list[Requirement]:
    """What ``pip install name[extras]`` asks for on ``environment`` (default: this interpreter).

    Self-references (``sglang[runtime_common]; extra == "srt"``) are expanded; requirements whose
    markers do not hold are dropped, and so are the names in ``exclude``. The first requirement
    of a name wins (a release lists each once per extra; later copies repeat it)."""
    lines = list(lines)
    me = normalize(name)
    skip = {normalize(e) for e in exclude}
    base_env = dict(environment) if environment is not None else dict(default_environment())
    wanted = {""} | {normalize(e) for e in extras}
    chosen: dict[str, Requirement] = {}
    done: set[str] = set()
    while wanted - done:
        extra = sorted(wanted - done)[0]
        done.add(extra)
        for line in lines:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**base_env, "extra": extra}):
                continue
            if req.marker is None and extra:
                continue  # an unconditional requirement belongs to the base set, taken once
            key = normalize(req.name)
            if key == me:
                wanted |= {normalize(e) for e in req.extras}
                continue
            if key in skip or key in chosen:
                continue
            req.marker = None
            chosen[key] = req
    return list(chosen.values())


def pinned_version(requirements: Iterable[Requirement], name: str) -> str | None:
    """The version ``name`` is pinned to (``name==X``), or ``None`` when it is not pinned."""
    for req in requirements:
        if normalize(req.name) == normalize(name):
            pins = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
            return pins[0] if len(pins) == 1 else None
    return None


if __name__ == "__main__":
    wheel, *extras = sys.argv[1:]
    for r in release_requirements(pathlib.Path(wheel).name.split("-")[0], requires_dist(wheel), extras):
        print(r)
    print(f"# built {build_date(wheel).isoformat()}")
