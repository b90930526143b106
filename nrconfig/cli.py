"""The command line every ``nr-*`` script shares.

``PROG [--config FILE|NAME] [key=value ...] [--print-config] [--version] [--help]`` plus the script's own
options. ``--help`` lists every config key of the schema with its type, default and description. The old
spellings ``--key value``, ``--key=value`` and ``--kebab-case value`` still work and print a deprecation
warning naming the new spelling. argparse (standard library) handles the options; OmegaConf (see
:mod:`nrconfig.tree`) the config.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from nrconfig.tree import ConfigError, build, describe, resolve_config_path, to_yaml

__all__ = ["parse", "parse_args", "cli_error", "version_string", "add_version", "keys_help"]

T = TypeVar("T")
DIST = "neighborretr-wds"


def version_string(prog: str) -> str:
    """``"PROG 0.1.0"`` (the installed distribution's version; ``0+unknown`` when run from a bare checkout)."""
    try:
        v = importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        v = "0+unknown"
    return f"{prog} {v}"


def add_version(parser: argparse.ArgumentParser) -> None:
    """Add ``--version`` to a script's own parser."""
    parser.add_argument("--version", action="version", version=version_string(parser.prog))


def keys_help(schema: type | Any) -> str:
    """The help section listing every key: ``  key (type, default D): description``."""
    lines = ["config keys (set as key=value, or in the --config YAML):"]
    for d in describe(schema):
        lines.append(f"  {d.key} ({d.type}, default {d.default!r}): {d.help}".rstrip(": "))
    return "\n".join(lines)


def cli_error(prog: str, exc: BaseException | str) -> int:
    """Print ``PROG: error: MESSAGE`` on stderr (no traceback) and return exit code 2."""
    print(f"{prog}: error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's one error line
    return 2


def _legacy(rest: list[str], parser: argparse.ArgumentParser, top_keys: set[str]) -> list[str]:
    """Turn the leftover tokens into ``key=value`` overrides (old ``--key value`` spellings with a warning)."""
    out: list[str] = []
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("--") and len(tok) > 2:
            key, eq, value = tok[2:].partition("=")
            key = key.replace("-", "_")
            if key.split(".")[0] not in top_keys:
                close = difflib.get_close_matches(tok.split("=")[0], options, n=3, cutoff=0.6)
                close += [
                    f"{k}=..." for k in difflib.get_close_matches(key, sorted(top_keys), n=3, cutoff=0.6)
                ]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown option {tok.split('=')[0]}{hint}; see --help")
            if not eq:
                if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                    raise ConfigError(f"option {tok} has no value (write {key}=VALUE)")
                value = rest[i + 1]
                i += 1
            print(  # noqa: T201 - one line per old spelling, before logging is configured
                f"{parser.prog}: warning: {tok.split('=')[0]} VALUE is deprecated, write {key}=VALUE",
                file=sys.stderr,
            )
            out.append(f"{key}={value}")
        elif "=" in tok and not tok.startswith("-"):
            out.append(tok)
        else:
            raise ConfigError(
                f"unexpected argument {tok!r}: config overrides look like key=value (see --help)"
            )
        i += 1
    return out


def parse_args(
    schema: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    load: Callable[[str | None, list[str]], T] | None = None,
    config_dir: str = "",
    epilog: str = "",
) -> tuple[T, argparse.Namespace]:
    """Parse a command line into ``(config, namespace)``.

    ``schema``: the dataclass whose keys the command line sets. ``add_arguments(parser)`` adds the script's
    own options (their values are in the namespace). ``load(path, overrides)`` builds the config (default:
    :func:`nrconfig.build` of the ``--config`` file, resolved by :func:`resolve_config_path` under the shipped
    ``configs/{config_dir}``). ``--help``, ``--version`` and ``--print-config`` exit 0 here; a bad config
    raises :class:`ConfigError` (report it with :func:`cli_error`).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        usage=f"{prog} [--config FILE|NAME] [options] [key=value ...]",
        epilog=(epilog + "\n\n" if epilog else "") + keys_help(schema),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        metavar="FILE|NAME",
        help=f"YAML file, or the name of a shipped config (configs/{config_dir + '/' if config_dir else ''}NAME.yaml)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    add_version(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    top = {d.key.split(".")[0] for d in describe(schema)}
    overrides = _legacy(rest, parser, top)
    if load is None:

        def load(path: str | None, items: list[str]) -> T:
            return build(schema, *([resolve_config_path(path, config_dir)] if path else []), overrides=items)

    cfg = load(args.config, overrides)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        raise SystemExit(0)
    return cfg, args


def parse(schema: type[T], argv: Sequence[str] | None = None, *, prog: str, description: str, **kw: Any) -> T:
    """:func:`parse_args` without script options: the config alone."""
    return parse_args(schema, argv, prog=prog, description=description, **kw)[0]
