"""Write the generated parts of protocol/SPEC.md from the code's own tables, so the two cannot disagree.

Each generated part sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``; the text
between the markers is replaced, the rest of SPEC.md is left as written. Parts:

- ``sim-table``: what a server does with each CONTROL command in each SimState (``protocol.SIM_TRANSITIONS``).

    python tools/gen_spec.py            # rewrite the generated parts of protocol/SPEC.md
    python tools/gen_spec.py --check    # exit 1 if SPEC.md is not what this script generates
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol._session import sim_table_markdown  # noqa: E402

SPEC = ROOT / "protocol" / "SPEC.md"
PARTS: dict[str, Callable[[], str]] = {"sim-table": sim_table_markdown}


def render(text: str) -> str:
    """``text`` (SPEC.md) with every generated part rewritten; ValueError if a part's markers are missing."""
    for name, make in PARTS.items():
        pattern = re.compile(
            rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end generated: {re.escape(name)} -->)",
            flags=re.S,
        )
        found = pattern.search(text)
        if found is None:
            raise ValueError(f"{SPEC}: no markers for the generated part {name!r}")
        text = text[: found.end(1)] + make() + "\n" + text[found.start(2) :]
    return text


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if SPEC.md's generated parts are stale")
    args = parser.parse_args()
    text = SPEC.read_text(encoding="utf-8")
    try:
        new = render(text)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"{SPEC} is stale: run python tools/gen_spec.py", file=sys.stderr)
            return 1
        print(f"{SPEC} is up to date")
        return 0
    SPEC.write_text(new, encoding="utf-8")
    print(f"wrote {', '.join(PARTS)} into {SPEC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
