"""The `secateurs` command. Each subcommand lives with its part of the product; this only dispatches,
importing a part when its command runs so that the light client never imports the engine."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secateurs", description="Structured channel pruning as a service.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    try:
        from .pruning.cli import add_parser as add_prune
    except ImportError:  # the light client: no engine installed
        add_prune = None
    if add_prune is not None:
        add_prune(sub)
    try:
        from .api.cli import add_parsers as add_service
    except ImportError:  # the light client: no server installed
        add_service = None
    if add_service is not None:
        add_service(sub)
    from .client.cli import add_parsers as add_client  # the light client always has these

    add_client(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("secateurs: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if os.environ.get("SECATEURS_DEBUG"):
            raise
        print(f"secateurs: error: `secateurs {args.command}` needs the engine and the server "
              f"(missing module {exc.name!r}): pip install 'secateurs[server]'", file=sys.stderr)
        return 2
    except Exception as exc:  # one line for the user; the traceback only on request
        if os.environ.get("SECATEURS_DEBUG"):
            raise
        for handler in _error_handlers():
            code = handler(exc)
            if code is not None:
                return code
        print(f"secateurs: internal error: {type(exc).__name__}: {exc} "
              "(set SECATEURS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _error_handlers():  # type: ignore[no-untyped-def]
    try:
        from .pruning.cli import handle_errors
    except ImportError:
        return []
    return [handle_errors]


if __name__ == "__main__":
    sys.exit(main())
