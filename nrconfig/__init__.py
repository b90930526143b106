"""One configuration mechanism for every ``nr-*`` command: typed dataclass schemas, YAML files, dotted
``key=value`` overrides (OmegaConf structured configs), and a self-documenting command line.

- :func:`build` merges defaults <- YAML files/mappings <- overrides into an instance of the schema
  (OmegaConf checks keys and types; its errors become :class:`ConfigError` naming the dotted key and, for an
  unknown key, the closest known ones).
- :func:`describe` lists every dotted key of a schema with its type, default and one-line description.
- :func:`parse` / :func:`parse_args` is the command line every CLI shares (``--config``, ``key=value``,
  ``--print-config``, ``--version``, ``--help`` listing every key).
"""

from nrconfig.cli import add_version, cli_error, keys_help, parse, parse_args, version_string
from nrconfig.tree import ConfigError, KeyDoc, build, describe, overrides_tree, resolve_config_path, to_yaml

__all__ = [
    "ConfigError",
    "KeyDoc",
    "build",
    "describe",
    "resolve_config_path",
    "to_yaml",
    "overrides_tree",
    "add_version",
    "keys_help",
    "parse",
    "parse_args",
    "cli_error",
    "version_string",
]
