"""Schema -> config: OmegaConf structured configs with our error messages and key documentation.

OmegaConf does the merging (defaults <- YAML <- dotted overrides) and the key and type checks; this module
turns its exceptions into one-line :class:`ConfigError` messages that name the dotted key (and, for an unknown
key, the closest known keys, by :mod:`difflib`), and reads each field's one-line description from the schema:
``field(metadata={"help": ...})`` when given, else the ``# comment`` on (or right above) the field's line.
Reading comments is our own code because the schemas are documented that way already and OmegaConf has no
notion of field descriptions.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.resources
import inspect
import io
import os
import textwrap
import tokenize
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

__all__ = ["ConfigError", "KeyDoc", "build", "describe", "resolve_config_path", "to_yaml", "overrides_tree"]

T = TypeVar("T")
SECRET_FIELDS = ("key", "secret", "password", "token")


class ConfigError(ValueError):
    """A configuration problem found before any work; the message names the input (file, dotted key)."""


@dataclass(frozen=True)
class KeyDoc:
    """One documented config key: dotted ``key``, ``type`` as written in the schema, ``default``, ``help``."""

    key: str
    type: str
    default: Any
    help: str


# ------------------------------------------------------------------------------------------------------------
# documentation of a schema
# ------------------------------------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(text.split())


def _docstring_entries(doc: str) -> dict[str, str]:
    """``name: text`` / ``a, b: text`` paragraphs of a class docstring (continuation lines indented)."""
    out: dict[str, str] = {}
    names: list[str] = []
    for line in inspect.cleandoc(doc).splitlines():
        head, sep, text = line.partition(": ")
        words = [w.strip() for w in head.split(",")]
        if sep and not line.startswith(" ") and all(w.isidentifier() for w in words):
            names = words
            for w in names:
                out[w] = text.strip()
        elif names and line.startswith(" "):
            for w in names:
                out[w] += " " + line.strip()
        else:
            names = []
    return out


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` read from the class source, first match wins: the string literal right after
    the field (attribute docstring), the ``# comment`` on the field's lines, the comment block right above it,
    a ``name: text`` entry of the class docstring."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        trailing: dict[int, str] = {}
        standalone: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                (standalone if tok.line.strip().startswith("#") else trailing)[tok.start[0]] = text
        node = ast.parse(src).body[0]
        body = getattr(node, "body", [])
        listed = _docstring_entries(ast.get_docstring(node) or "") if isinstance(node, ast.ClassDef) else {}
        for n, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = stmt.target.id
            after = body[n + 1] if n + 1 < len(body) else None
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                out[name] = _one_line(after.value.value)
                continue
            span = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
            own = [trailing.get(i) or standalone.get(i) for i in span if i in trailing or i in standalone]
            if not own:
                i = stmt.lineno - 1
                while i in standalone:
                    own.insert(0, standalone[i])
                    i -= 1
            if own:
                out[name] = _one_line(" ".join(typing.cast(list[str], own)))
            elif name in listed:
                out[name] = _one_line(listed[name])
    return out


def _type_names(cls: type) -> dict[str, str]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: show them as written
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        out[f.name] = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or str(tp)
        out[f.name] = out[f.name].replace("typing.", "").replace("NoneType", "None")
    return out


def describe(schema: type | Any, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of ``schema`` (a dataclass or an instance) with type, default and description.

    Nested dataclasses (also those held by ``Any`` fields, such as ``TrainConfig.model``) are expanded into
    dotted keys.
    """
    inst = schema() if isinstance(schema, type) else schema
    cls = type(inst)
    docs, types = _field_docs(cls), _type_names(cls)
    out: list[KeyDoc] = []
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.extend(describe(value, key + "."))
            continue
        text = f.metadata.get("help") or docs.get(f.name, "")
        out.append(KeyDoc(key, types[f.name], value, text))
    return out


# ------------------------------------------------------------------------------------------------------------
# building a config
# ------------------------------------------------------------------------------------------------------------
def overrides_tree(items: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "run.out=x"]`` -> ``{"optim": {"lr": 3e-4}, "run": {"out": "x"}}`` (OmegaConf's
    YAML reading of the values)."""
    items = list(items)
    for item in items:
        key = item.partition("=")[0].strip()
        if "=" not in item or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        if any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
    try:
        return typing.cast(dict, OmegaConf.to_container(OmegaConf.from_dotlist(items)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"overrides {items}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _known_under(conf: DictConfig, parent: str) -> list[str]:
    node = OmegaConf.select(conf, parent) if parent else conf
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def _check_bools(
    conf: DictConfig, data: Mapping[str, Any], prefix: str, yaml_bools: Mapping[str, Any]
) -> None:
    """YAML 1.1 reads ``no``/``yes``/``on``/``off`` as booleans; OmegaConf would store them as "False"/"True"
    in string fields. Map those listed in ``yaml_bools`` (``{"run.mixed_precision": {False: "no"}}``), refuse
    the rest."""
    for name, value in list(data.items()):
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            _check_bools(conf, value, key + ".", yaml_bools)
            continue
        if not isinstance(value, bool):
            continue
        parent = OmegaConf.select(conf, prefix[:-1]) if prefix else conf
        if not isinstance(parent, DictConfig) or str(name) not in parent:
            continue
        node = parent._get_node(str(name))
        if type(node).__name__ != "StringNode":
            continue
        mapped = yaml_bools.get(key, {})
        if value in mapped:
            typing.cast(dict, data)[name] = mapped[value]
            continue
        raise ConfigError(
            f"{key}: expected a string, got bool {value!r} (YAML reads no/yes/on/off/true/false as "
            f'booleans: quote the value, e.g. {key}=\'"no"\' on the command line or "no" in YAML)'
        )


def _merge(
    conf: DictConfig, data: Mapping[str, Any], source: str, yaml_bools: Mapping[str, Any]
) -> DictConfig:
    _check_bools(conf, data, "", yaml_bools)
    try:
        return typing.cast(DictConfig, OmegaConf.merge(conf, data))
    except ConfigKeyError as e:
        full = str(e.full_key or e.key)
        parent, _, name = full.rpartition(".")
        known = _known_under(conf, parent)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = (
            f" (did you mean {', '.join(repr(f'{parent}.{c}' if parent else c) for c in close)}?)"
            if close
            else ""
        )
        where = f" in {source}" if source != "command line" else ""
        raise ConfigError(
            f"unknown config key {full!r}{hint}{where}; known keys under {parent or 'the top level'}: "
            f"{', '.join(known)}"
        ) from None
    except ValidationError as e:
        key = str(e.full_key or e.key or "")
        raise ConfigError(f"{key}: {_first_line(e)} ({source})") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_first_line(e)}") from None


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def build(
    schema: type[T],
    *sources: str | os.PathLike | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] = (),
    yaml_bools: Mapping[str, Any] | None = None,
) -> T:
    """Defaults of ``schema`` <- each source (a YAML path or a mapping) <- ``overrides`` -> a ``schema``
    instance.

    ``overrides`` is a list of dotted ``key=value`` strings (values read as YAML) or a nested mapping.
    Raises :class:`ConfigError` naming the source and the dotted key. The schema's ``__post_init__`` runs
    (its ``ValueError`` becomes a ConfigError too).
    """
    yaml_bools = yaml_bools or {}
    conf = OmegaConf.structured(schema)
    for src in sources:
        name = "<mapping>" if isinstance(src, Mapping) else os.fspath(src)
        data = src if isinstance(src, Mapping) else _read_yaml(name)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{name}: the top level must be a mapping of keys, got {type(data).__name__}")
        conf = _merge(conf, dict(data), name, yaml_bools)
    tree = overrides if isinstance(overrides, Mapping) else overrides_tree(overrides)
    if tree:
        conf = _merge(conf, dict(tree), "command line", yaml_bools)
    try:
        return typing.cast(T, OmegaConf.to_object(conf))
    except OmegaConfBaseException as e:
        raise ConfigError(_first_line(e)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def to_yaml(cfg: Any) -> str:
    """The config (a dataclass instance) as YAML, with credential fields (key/secret/...) blanked."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (None if k in SECRET_FIELDS and isinstance(v, str) else clean(v)) for k, v in node.items()
            }
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return yaml.safe_dump(clean(dataclasses.asdict(cfg)), sort_keys=False)


# ------------------------------------------------------------------------------------------------------------
# shipped configs
# ------------------------------------------------------------------------------------------------------------
def _shipped(subdir: str) -> dict[str, str]:
    try:
        root = importlib.resources.files("configs")
    except ModuleNotFoundError:
        return {}
    folder = root.joinpath(subdir) if subdir else root
    if not folder.is_dir():
        return {}
    return {
        p.name.rsplit(".", 1)[0]: str(p)
        for p in folder.iterdir()
        if p.name.endswith((".yaml", ".yml")) and p.is_file()
    }


def resolve_config_path(name: str, subdir: str = "") -> str:
    """A config file path for ``--config NAME``: an existing file as given, else the shipped config
    ``configs/{subdir}/{NAME}.yaml`` installed with the package (``nr-train --config demo``)."""
    if os.path.exists(name):
        return name
    shipped = _shipped(subdir)
    stem = os.path.basename(name).rsplit(".", 1)[0] if name.endswith((".yaml", ".yml")) else name
    as_in_repo = "/".join(x for x in ("configs", subdir, f"{stem}.yaml") if x)
    if stem in shipped and ("/" not in name or name.replace(os.sep, "/") == as_in_repo):
        return shipped[stem]
    close = difflib.get_close_matches(stem, list(shipped), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(
        f"cannot read config file {name!r}: no such file, and not a shipped config{hint}; shipped: "
        f"{', '.join(sorted(shipped))}"
    )
