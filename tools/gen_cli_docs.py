"""Write docs/cli.md from the ``moecompat`` command's argparse parser.

    python tools/gen_cli_docs.py [docs/cli.md]

tests/unit/test_docs.py fails when the page differs from what this writes, so the page never goes
stale: after changing an option, run this and commit the page.
"""

from __future__ import annotations

import os
import pathlib
import sys

WIDTH = "100"


def render() -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps help to the terminal width
    try:
        return _render()
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def _render() -> str:
    from moecompat import cli

    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    parts = [
        "# Command line",
        "",
        "Generated from the parser by `python tools/gen_cli_docs.py`; `moecompat COMMAND --help` prints the same.",
        "Every command exits with status 2 and one line on stderr for a user error (a bad option value, a",
        "missing optional package, no CUDA for `--device cuda`, an engine that is not installed).",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, p in sub.choices.items():
        parts += ["", f"## `moecompat {name}`", "", "```text", p.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    out = pathlib.Path(argv[1] if len(argv) > 1 else pathlib.Path(__file__).resolve().parents[1] / "docs/cli.md")
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
