"""Sessions: unit tests, lint, docs, and the engine matrices.

    nox -s tests                      # unit tests (CPU, no engine)
    nox -s lint docs
    nox -t ci                         # what CI runs: tests + a few engine releases
    nox -t surface                    # the full CPU engine matrix (every vLLM / SGLang release)
    nox -s "surface_vllm(0.24.0)"    # one release of the matrix
    nox -s surface_vllm -- 0.9.1      # any other release, on demand
    nox -s surface_sglang -- 0.5.3.post1   # (SGLang 0.4.8-0.5.4: installed from the release's own
                                      #  Requires-Dist, read from its wheel; see tests/engines/envs.toml)
    nox -s compat_table               # docs/compatibility.md from docs/results/ and tests/engines/releases.toml
    nox -s gpu_vllm -- 0.24.0         # real GPU kernels (needs CUDA); see docs/gpu.md

Environment:
    MOECOMPAT_WHEELHOUSE=DIR   also look for wheels in DIR (pip --find-links)
    MOECOMPAT_OFFLINE=1        install from the wheelhouse only (pip --no-index), for air-gapped machines
    MOECOMPAT_PREINSTALLED=1   GPU sessions: the engine is already importable; check its version, install nothing
    MOECOMPAT_SYSTEM_TORCH=1   GPU sessions: no virtualenv; install into and test with the running interpreter (its GPU torch)
    MOECOMPAT_KEEP_VENVS=1     keep each engine session's virtualenv after it ran (default: delete it, see _release_venv)

Disk: an engine virtualenv holds 1.5-7 GB (SGLang 0.5.x needs a CUDA torch build for torchvision), so
the full matrix kept would need well over 100 GB. Engine sessions therefore delete their virtualenv
when they end, and under CI (CI set) pip keeps no cache: a run needs room for one engine env at a time.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import sys

import nox

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = pathlib.Path(__file__).resolve().parent
ENVS = tomllib.loads((ROOT / "tests/engines/envs.toml").read_text())
CPU_TORCH = "2.13.0"
RESULTS = ROOT / "docs/results"

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]

if os.environ.get("CI"):
    # Every wheel is downloaded once per CI run anyway; a cache only adds its size to the disk used.
    os.environ.setdefault("PIP_NO_CACHE_DIR", "1")


def _pip_source_args() -> list[str]:
    args = []
    wheelhouse = os.environ.get("MOECOMPAT_WHEELHOUSE")
    if wheelhouse:
        args += ["--find-links", wheelhouse]
    if os.environ.get("MOECOMPAT_OFFLINE") == "1":
        args.append("--no-index")
    return args


# Byte-compiling every installed module is half a wheel's install time (torch: 38 s with, 19 s
# without, measured here) and the environments are thrown away; Python compiles what a test
# imports. (A flag, not PIP_NO_COMPILE=1: pip reads that variable the other way round.)
_PIP_FLAGS = ("--no-compile",)


def _install(session: nox.Session, *args: str) -> None:
    if session.venv_backend == "none":
        # Offline GPU mode: no virtualenv, the interpreter that holds the GPU torch.
        session.run("python", "-m", "pip", "install", "--no-build-isolation", *_PIP_FLAGS, *_pip_source_args(), *args)
    else:
        session.install(*_PIP_FLAGS, *_pip_source_args(), *args)


def _log_free_disk(session: nox.Session) -> None:
    where = session.virtualenv.location if session.venv_backend != "none" else str(ROOT)
    free = shutil.disk_usage(pathlib.Path(where).parent).free
    session.log(f"free disk where the environment lives: {free / 2**30:.1f} GiB (an engine env needs up to ~7 GiB)")


def _release_venv(session: nox.Session) -> None:
    """Delete the session's virtualenv (see the module docstring); MOECOMPAT_KEEP_VENVS=1 keeps it."""
    if session.venv_backend == "none" or os.environ.get("MOECOMPAT_KEEP_VENVS") == "1":
        return
    location = session.virtualenv.location
    session.log(f"deleting {location} (set MOECOMPAT_KEEP_VENVS=1 to keep it)")
    shutil.rmtree(location, ignore_errors=True)


def _group(engine: str, version: str) -> dict:
    """The install group whose version specifier contains ``version``; a release newer than
    every group falls back to the newest group (so a new release can be tried at once)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    groups = ENVS[engine]["group"]
    for g in groups:
        if SpecifierSet(g["versions"]).contains(Version(version), prereleases=True):
            return g
    print(f"{engine} {version}: no install group lists it; using the newest group", file=sys.stderr)
    return groups[-1]


@nox.session(python="3.11", tags=["ci"])
def tests(session: nox.Session) -> None:
    """Unit tests on CPU with no engine installed (reference backend, machinery, validation)."""
    _install(session, f"torch=={CPU_TORCH}")
    _install(session, "-e", ".[test]")
    # One worker per core (pytest-xdist); arguments given replace it (`nox -s tests -- -k cli`).
    session.run("pytest", "tests/unit", *(session.posargs or ["-n", "auto"]))


#: The oldest torch moecompat claims (pyproject: torch>=2.5, for torch.library.custom_op and
#: torch.compiler.substitute_in_graph) with the oldest Python it claims.
OLDEST = {"python": "3.10", "torch": "2.5.1"}


@nox.session(python=OLDEST["python"])
def tests_oldest(session: nox.Session) -> None:
    """The unit tests on the oldest Python and torch moecompat claims (a CUDA build of torch from
    the index: several GB; it imports without a GPU)."""
    _install(session, f"torch=={OLDEST['torch']}", "numpy<2")
    _install(session, "-e", ".[test]")
    session.run("pytest", "tests/unit", *session.posargs)
    _release_venv(session)


@nox.session(python="3.12")
def tests_py312(session: nox.Session) -> None:
    """The unit tests on Python 3.12 (the GPU machine's) with the CI torch (from the index there)."""
    _install(session, f"torch=={CPU_TORCH}")
    _install(session, "-e", ".[test]")
    session.run("pytest", "tests/unit", *session.posargs)
    _release_venv(session)


@nox.session(python="3.11", tags=["ci"])
def lint(session: nox.Session) -> None:
    _install(session, f"torch=={CPU_TORCH}")
    _install(session, "-e", ".[lint]")
    session.run("ruff", "check", "moecompat", "tests", "benchmarks", "tools", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.11", tags=["ci"])
def package(session: nox.Session) -> None:
    """Build the wheel and sdist and check what they carry (tools/check_dist.py)."""
    _install(session, "build")
    dist = pathlib.Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    session.run("python", "tools/check_dist.py", str(dist))


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    _install(session, f"torch=={CPU_TORCH}")
    _install(session, "-e", ".[docs]")
    session.run("mkdocs", "build", "--strict")


def _release_reqs():
    """tools/release_reqs.py: a release's own requirements, read from its wheel."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools import release_reqs

    return release_reqs


def _download_release(session: nox.Session, engine: str, version: str) -> pathlib.Path:
    """The release's own wheel (no dependencies), downloaded into the session's tmp folder."""
    dest = pathlib.Path(session.create_tmp()) / f"{engine}-{version}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    session.run("python", "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *_pip_source_args(),
                "-d", str(dest), f"{engine}=={version}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        session.error(f"{engine} {version}: expected one wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def _own_requirements(session: nox.Session, engine: str, version: str, group: dict) -> tuple[pathlib.Path, list, str]:
    """The release's wheel, its own requirements (base plus the group's ``extras``, less
    ``[engine] cpu_exclude``) and the torch release it pins."""
    rr = _release_reqs()
    wheel = _download_release(session, engine, version)
    reqs = rr.release_requirements(engine, rr.requires_dist(wheel), group.get("extras", []),
                                   ENVS[engine].get("cpu_exclude", []))
    torch_pin = rr.pinned_version(reqs, "torch")
    if torch_pin is None:
        session.error(f"{engine} {version} pins no torch release; give its install group a torch version")
    return wheel, reqs, torch_pin


def _install_own_requirements(session: nox.Session, engine: str, version: str, group: dict) -> None:
    """Install ``engine==version`` the way ``pip install engine[extras]==version`` would on this
    machine, from the release's own ``Requires-Dist`` (read from its wheel): its own torch pin
    (a CUDA build from the index; it imports without a GPU), its own pins of transformers,
    xgrammar, ..., and every unpinned requirement as pip resolved it when the release came out
    (``--uploaded-prior-to`` the wheel's build date plus a day). Dropped: ``[engine] cpu_exclude``.
    Then the group's ``no_deps`` and ``overrides`` (where the release's own pins fail on CPU)."""
    rr = _release_reqs()
    wheel, reqs, torch_pin = _own_requirements(session, engine, version, group)
    cutoff = (rr.build_date(wheel) + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    session.log(f"{engine} {version}: torch {torch_pin}, {len(reqs)} requirements of its own "
                f"(extras {group.get('extras', [])}), resolved as of {cutoff}")
    _install(session, "--prefer-binary", f"--uploaded-prior-to={cutoff}", *(str(r) for r in reqs),
             *group.get("requirements", []))
    for pkg in group.get("no_deps", []):
        _install(session, "--no-deps", pkg)
    for pkg in group.get("overrides", []):
        _install(session, "--no-deps", pkg)
    _install(session, "--no-deps", str(wheel))


def _surface(session: nox.Session, engine: str, version: str) -> None:
    versions = session.posargs or [version]
    if session.posargs and version != ENVS[engine]["versions"][0]:
        session.skip(f"versions given on the command line ({session.posargs}) run in the first parametrization only")
    _log_free_disk(session)
    try:
        _surface_versions(session, engine, versions)
    finally:
        _release_venv(session)


def _surface_versions(session: nox.Session, engine: str, versions: list[str]) -> None:
    for v in versions:
        group = _group(engine, v)
        if group.get("torch") == "release":
            _install_own_requirements(session, engine, v, group)
        else:
            _install(session, f"torch=={group.get('torch', CPU_TORCH)}")
            for pkg in group.get("no_deps", []):
                _install(session, "--no-deps", pkg)
            _install(session, "--no-deps", f"{engine}=={v}")
            if group.get("requirements"):
                _install(session, *group["requirements"])
        pins = ENVS[engine].get("pins", {}).get(v)
        if pins:
            _install(session, *pins)
        _install(session, "--no-deps", "-e", ".")
        _install(session, "packaging", "pytest", "hypothesis")
        out = RESULTS / "surface"
        out.mkdir(parents=True, exist_ok=True)
        junit = session.create_tmp() + f"/{engine}-{v}.xml"
        ok = True
        try:
            session.run("pytest", "tests/engines", "--engine", engine, "-q", "-p", "no:cacheprovider", "--durations=15",
                        f"--junitxml={junit}", env=group.get("env", {}))
        except nox.command.CommandFailed:
            ok = False
        session.run("python", "tools/record_surface.py", engine, v, junit, str(out / f"{engine}-{v}.json"), env=group.get("env", {}))
        if not ok:
            session.error(f"{engine} {v}: surface tests failed")


@nox.session(python="3.11", tags=["surface"])
@nox.parametrize("version", ENVS["vllm"]["versions"], ids=ENVS["vllm"]["versions"])
def surface_vllm(session: nox.Session, version: str) -> None:
    """moecompat's vLLM adapters against a real installed vLLM release (CPU)."""
    _surface(session, "vllm", version)


GPU_VERSIONS = {"vllm": ENVS["vllm"].get("gpu", []), "sglang": ENVS.get("sglang", {}).get("gpu", [])}


def _gpu(session: nox.Session, engine: str) -> None:
    """Install ``engine`` (each version given, or the table's GPU list) and run tests/gpu."""
    session.run("python", "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else "
                "'no CUDA device: GPU sessions never run (or pass) without one')")
    versions = session.posargs or GPU_VERSIONS[engine]
    out = RESULTS / "gpu"
    out.mkdir(parents=True, exist_ok=True)
    for v in versions:
        if os.environ.get("MOECOMPAT_SYSTEM_TORCH") != "1":
            group = _group(engine, v)
            torch_version = group.get("gpu_torch", group.get("torch", CPU_TORCH))
            if torch_version == "release":
                torch_version = _own_requirements(session, engine, v, group)[2]
            _install(session, f"torch=={torch_version}")
        if os.environ.get("MOECOMPAT_PREINSTALLED") == "1":
            # The engine is already importable (e.g. an unpacked offline bundle on PYTHONPATH):
            # check it is the requested release instead of installing.
            session.run("python", "-c", f"import importlib.metadata as m, sys; v = m.version({engine!r}); "
                        f"sys.exit(0 if v == {v!r} else f'{engine} {{v}} is importable, not {v}')")
        else:
            _install(session, "--no-deps", f"{engine}=={v}")
            for pkg in ENVS[engine].get("gpu_requirements", []):
                _install(session, "--no-deps", pkg)
        _install(session, "--no-deps", "-e", ".")
        session.run("pytest", "tests/gpu", "--engine", engine, "-q", "-p", "no:cacheprovider",
                    f"--gpu-results={out / f'{engine}-{v}.json'}")


_GPU_VENV = {"venv_backend": "none"} if os.environ.get("MOECOMPAT_SYSTEM_TORCH") == "1" else {"python": "3.12"}


@nox.session(**_GPU_VENV)
def gpu_vllm(session: nox.Session) -> None:
    """Real vLLM fused-MoE kernels vs the reference on a CUDA GPU (one run per version given)."""
    _gpu(session, "vllm")


@nox.session(**_GPU_VENV)
def gpu_sglang(session: nox.Session) -> None:
    """Real SGLang fused-MoE kernels vs the reference on a CUDA GPU."""
    _gpu(session, "sglang")


@nox.session(python=False)
def ep(session: nox.Session) -> None:
    """Expert-parallel fused MoE: 2 ranks with gloo on CPU; with 2+ GPUs, NCCL correctness and
    timing per rank count (results under docs/results/ep/)."""
    out = RESULTS / "ep"
    out.mkdir(parents=True, exist_ok=True)
    session.run("python", "benchmarks/ep_fused_moe.py", "--world-size", "2", "--device", "cpu", "--shape", "tiny",
                "--backend", "reference", "--json", str(out / "gloo-cpu.json"))
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        session.log(f"{gpus} GPU(s): the NCCL runs need 2 or more; only the CPU (gloo) run was made")
        return
    for dtype in ("bf16", "fp8_w8a8"):
        for shape in ("mixtral", "deepseek-like"):
            for world in (1, 2):
                session.run("python", "benchmarks/ep_fused_moe.py", "--world-size", str(world), "--device", "cuda",
                            "--shape", shape, "--dtype", dtype, "--time", "--tokens", "1", "16", "64", "256", "1024", "4096",
                            "--json", str(out / f"nccl-{shape}-{dtype}-{world}gpu.json"), env={"NCCL_NVLS_ENABLE": "0"})


@nox.session(python="3.11", tags=["surface"])
@nox.parametrize("version", ENVS["sglang"]["versions"], ids=ENVS["sglang"]["versions"])
def surface_sglang(session: nox.Session, version: str) -> None:
    """moecompat's SGLang adapters against a real installed SGLang release (CPU)."""
    _surface(session, "sglang", version)


# CI subset: the surface session body under ci-tagged names, for the versions each engine's
# table lists under `ci`.
for _engine in ("vllm", "sglang"):
    for _v in ENVS[_engine]["ci"]:
        def _ci(session: nox.Session, _engine: str = _engine, _v: str = _v) -> None:
            _surface(session, _engine, _v)

        _ci.__doc__ = f"CI subset: surface_{_engine} for {_v}"
        nox.session(name=f"ci_{_engine}-{_v}", python="3.11", tags=["ci"])(_ci)


@nox.session(python="3.11")
def compat_table(session: nox.Session) -> None:
    """Write docs/compatibility.md from the recorded matrix results."""
    session.install("packaging")
    session.run("python", "tools/compat_table.py", str(RESULTS), str(ROOT / "docs/compatibility.md"),
                str(ROOT / "tests/engines/releases.toml"))
