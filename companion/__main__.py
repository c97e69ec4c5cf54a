"""The companion's command line: ``python -m companion <command>``.

Commands:
    check   versions, device, budget, and one step of an ALE, a MinAtar and a popgym env.
"""

from __future__ import annotations

import argparse
import sys

from companion.budget import BudgetError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m companion", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("check", help="check the installation: versions, device, one step of each env family")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            from companion.check import main as check_main

            return check_main()
    except BudgetError as err:  # a bad COMPANION_BUDGET is a one-line error, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
