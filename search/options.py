"""CLI options of ``nr-index`` / ``nr-search`` as dataclasses (one ``help`` per field) and one parser.

``parse_options`` is the only parsing code (``--name value`` per field, booleans as flags), so the shared config
machinery can replace it without touching the commands.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["IndexOptions", "SearchOptions", "ServeOptions", "parse_options", "OptionError"]

T = TypeVar("T")


class OptionError(ValueError):
    """Bad command-line input (exit code 2, one message)."""


def _f(default: Any, help: str) -> Any:  # noqa: A002 - the metadata key the config system reads
    return field(default=default, metadata={"help": help})


@dataclass
class IndexOptions:
    run: str | None = _f(None, "run folder (uses RUN/best, else its newest checkpoint)")
    checkpoint: str | None = _f(None, "checkpoint folder or pytorch_model.bin (instead of --run)")
    split: str = _f("test", "train | val | test (the config's data.<split>), or a split folder path/URL")
    out: str = _f("", "index folder to write (local path or s3://bucket/prefix); resumes an unfinished build")
    config: str | None = _f(None, "config YAML (default: the checkpoint's config.yaml)")
    dtype: str = _f("float16", "stored dtype of embeddings and token features: float16 | float32")
    bank: str | None = _f(None, "query-bank split (e.g. train): its captions' scores enable --hubness qb/is")
    batch_size: int | None = _f(None, "videos per encoding batch (default data.eval_batch_size)")
    cpu: bool = _f(False, "run on CPU even when CUDA exists")
    overwrite: bool = _f(
        False, "re-encode existing parts built from another checkpoint/dtype/shard (default: refuse them)"
    )
    ann: str = _f(
        "auto", "first-stage graph stored with the index: auto (from 1,500,000 videos) | usearch | none"
    )


@dataclass
class SearchOptions:
    index: str = _f("", "index folder (local path or s3://...)")
    query: str | None = _f(None, "one text query")
    queries: str | None = _f(None, "file of text queries, one a line")
    k: int = _f(10, "results per query (1..1000)")
    candidates: int = _f(
        200, "first-stage candidates re-ranked with the model's similarity (>= index size: exhaustive)"
    )
    hubness: str = _f(
        "none", "query-time hubness correction: none | qb (QB-Norm/DIS) | is (inverted softmax)"
    )
    beta: float = _f(20.0, "inverse temperature of QB-Norm / inverted softmax")
    qb_k: int = _f(1, "QB-Norm activation set: videos in the top-k of some bank query")
    json: bool = _f(False, "print JSON instead of a table")
    checkpoint: str | None = _f(
        None, "checkpoint for the text encoder (default: the one recorded in the manifest)"
    )
    cache_dir: str | None = _f(
        None, "download cache of a remote index (default $NEIGHBORRETR_CACHE/index/...)"
    )
    ann: str = _f("auto", "first stage: auto (the stored graph if any) | exact (matrix product) | usearch")


@dataclass
class ServeOptions:
    index: str = _f("", "index folder (local path or s3://...)")
    host: str = _f("127.0.0.1", "address to listen on")
    port: int = _f(8000, "TCP port")
    candidates: int = _f(200, "first-stage candidates per query")
    hubness: str = _f("none", "default hubness correction: none | qb | is")
    checkpoint: str | None = _f(None, "checkpoint for the text encoder (default: the manifest's)")
    cache_dir: str | None = _f(
        None, "download cache of a remote index (default $NEIGHBORRETR_CACHE/index/...)"
    )
    ann: str = _f("auto", "first stage: auto (the stored graph if any) | exact (matrix product) | usearch")


def parse_options(cls: type[T], argv: list[str], prog: str) -> T:
    """``--field value`` for each dataclass field (``--batch-size`` for ``batch_size``); OptionError on bad input."""

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise OptionError(message)

    p = _Parser(prog=prog, description=(cls.__doc__ or "").strip() or None)
    import nrconfig  # the shared --version of every nr-* script

    nrconfig.add_version(p)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            p.add_argument(flag, dest=f.name, action="store_true", help=help_)
            continue
        kind = {"int": int, "int | None": int, "float": float}.get(str(f.type), str)
        p.add_argument(
            flag, dest=f.name, type=kind, default=f.default, help=f"{help_} (default: {f.default})"
        )
    return cls(**vars(p.parse_args(argv)))
