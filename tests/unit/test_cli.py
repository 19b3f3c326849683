"""The command line: --version, help for every option, and every user error or missing optional
dependency as one line on stderr with exit status 2 (never a traceback)."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

import pytest

import moecompat as mc
from moecompat import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(monkeypatch, capsys):
    """``moecompat ARGV`` in this process, with the modules in ``block`` made unimportable."""

    def _run(argv: list[str], block: tuple[str, ...] = ()) -> _Result:
        for name in block:
            monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, as when absent
        capsys.readouterr()
        code = cli.main(argv)
        out = capsys.readouterr()
        return _Result(code, out.out, out.err)

    return _run


def _one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr, r.stderr
    assert len(err) == 1 and err[0].startswith("moecompat "), r.stderr
    for f in fragments:
        assert f in err[0], err[0]


def test_version():
    r = subprocess.run([sys.executable, "-m", "moecompat", "--version"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"moecompat {mc.__version__}"


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield parser.prog, action


def test_every_option_has_help_and_shows_its_default():
    parser = cli.build_parser()
    for prog, action in _actions(parser):
        assert action.help, f"{prog} {action.option_strings or action.dest}: no help"
    for name in ("bench", "tune"):
        text = " ".join(parser._subparsers._group_actions[0].choices[name].format_help().split())  # type: ignore[union-attr]
        for opt in ("--engine", "--dtype", "--tp-size", "--ep-size", "--batch-size", "--seed"):
            assert opt in text
        assert "(default: bf16)" in text and "(default: 1)" in text and "moecompat[bench]" in text
        assert "(default: None)" not in text, "an option's default shown twice or as None"


def test_progress_needs_tqdm(run):
    _one_line_error(run(["bench", "--preset", "mixtral-8x7b", "--progress", "--engine", "reference"], block=("tqdm",)),
                    "--progress", "pip install 'moecompat[bench]'")


def test_ray_needs_ray(run):
    _one_line_error(run(["bench", "--preset", "mixtral-8x7b", "--ray", "--engine", "reference"], block=("ray",)),
                    "--ray", "pip install 'moecompat[ray]'")


def test_cuda_device_without_cuda(run):
    import torch

    if torch.cuda.is_available():
        pytest.fail("the unit suite runs on a machine without CUDA")
    _one_line_error(run(["bench", "--preset", "mixtral-8x7b", "--device", "cuda"]), "--device", "no usable CUDA device")
    _one_line_error(run(["tune", "--preset", "mixtral-8x7b", "--device", "tpu"]), "--device")


def test_engine_not_installed(run):
    from moecompat.engines import ENGINES

    assert ENGINES["vllm"].version() is None
    _one_line_error(run(["bench", "--preset", "mixtral-8x7b", "--engine", "vllm"]), "vllm is not installed",
                    "pip install vllm", "backend='reference'")


def test_plot_without_matplotlib(tmp_path, run):
    (tmp_path / "r.json").write_text('{"meta": {"command": "bench"}, "results": []}')
    _one_line_error(run(["plot", str(tmp_path / "r.json"), "--out-dir", str(tmp_path)], block=("matplotlib",)),
                    "pip install 'moecompat[bench]'")


def test_plot_of_a_missing_file(tmp_path, run):
    _one_line_error(run(["plot", str(tmp_path / "nope.json")]), "results")


def test_user_errors_of_bench(tmp_path, run):
    _one_line_error(run(["bench", "--preset", "mixtral-9x9b"]), "--preset")
    _one_line_error(run(["bench", "--model", str(tmp_path / "none.json")]), "--model")
    _one_line_error(run(["tune", "--preset", "mixtral-8x7b", "--engine", "reference"]), "no Triton kernel")


def test_bench_prints_a_header_and_tflops_that_mean_something(tmp_path, capsys):
    assert cli.main(["bench", "--num-experts", "4", "--top-k", "2", "--hidden-size", "32", "--intermediate-size", "16",
                     "--batch-size", "1", "3", "--engine", "reference", "--device", "cpu", "--no-progress",
                     "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("custom: E=4 top_k=2 H=32 I=16") and "device cpu" in out[0] and "engine reference" in out[0]
    rows = [line.split() for line in out if line.strip() and line.split()[0].isdigit()]
    assert len(rows) == 2 and all(float(r[2]) > 0 for r in rows)  # TFLOP/s is not rounded to 0.0


def test_progress_line_when_asked(tmp_path, run):
    r = run(["bench", "--num-experts", "4", "--top-k", "2", "--hidden-size", "32", "--intermediate-size", "16",
              "--batch-size", "1", "2", "--engine", "reference", "--device", "cpu", "--progress",
              "--out", str(tmp_path / "b")])
    assert r.returncode == 0, r.stderr
    assert "bench custom" in r.stderr  # tqdm's bar on stderr
    r = run(["bench", "--num-experts", "4", "--top-k", "2", "--hidden-size", "32", "--intermediate-size", "16",
             "--batch-size", "1", "2", "--engine", "reference", "--device", "cpu", "--no-progress",
             "--out", str(tmp_path / "b")])
    assert r.returncode == 0 and "bench custom" not in r.stderr


def test_wheelhouse_dry_run_prints_the_pip_commands(run, tmp_path):
    res = run(["wheelhouse", "vllm", "0.26.0", "--dest", str(tmp_path / "wh"), "--python-version", "3.11",
               "--platform", "manylinux_2_28_x86_64", "--extra", "torch==2.11.0", "--dry-run"])
    assert res.returncode == 0, res.stderr
    download = [line for line in res.stdout.splitlines() if " download " in line]
    assert len(download) == 1
    for piece in ("--only-binary=:all:", "--python-version 3.11", "--platform manylinux_2_28_x86_64", "vllm==0.26.0",
                  "torch==2.11.0"):
        assert piece in download[0], piece
    assert not (tmp_path / "wh").exists(), "a dry run wrote files"


def test_wheelhouse_bad_version_is_one_line(run):
    _one_line_error(run(["wheelhouse", "vllm", "not a version", "--dry-run"]), "version")


def test_no_numpy_warning_without_numpy():
    """torch's 'Failed to initialize NumPy' line does not reach moecompat's users (NumPy hidden)."""
    code = ("import sys; sys.modules['numpy'] = None; import moecompat, torch; "
            "torch.zeros(2).cpu(); print('imported')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr
    assert "Failed to initialize NumPy" not in r.stderr, r.stderr
    bare = subprocess.run([sys.executable, "-c", "import sys; sys.modules['numpy'] = None; import torch"],
                          capture_output=True, text=True, timeout=300)
    assert "Failed to initialize NumPy" in bare.stderr, "torch no longer warns: this test and the filter can go"


def test_a_closed_pipe_is_not_a_traceback():
    """``moecompat doctor | head -1``: the reader leaves before the output is written (here: it
    closes the pipe at once); no traceback reaches the terminal, the status is 141 (SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "moecompat", "doctor"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the child has imported anything, let alone printed
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
