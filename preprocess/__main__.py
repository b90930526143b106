"""``nr-preprocess --config X [key=value ...]`` (``python -m preprocess``): run the shard job.

Every field of :class:`preprocess.config.PreprocessConfig` can be overridden (``num_workers=8``,
``out=s3://bucket/prefix``, ``storage.endpoint_url=http://minio:9000``); ``--help`` lists them. Parallel jobs on
several machines: give each ``num_jobs=N job_index=J`` (same command otherwise), then run
``nr-shards-index ROOT/SPLIT``.
Re-running the same command resumes: complete shards are skipped, incomplete ones rewritten.

Exit codes: 0 done (failed inputs are listed in the failures sidecars), 1 every input this job decoded failed
(a wrong ``video_root`` or a broken decoder, not bad videos; the failure rows name the reasons), 2 bad config or
annotations.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import nrconfig
from preprocess.config import ConfigError, PreprocessConfig, load_config

__all__ = ["main", "PROG"]

PROG = "nr-preprocess"


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="INFO", help="DEBUG | INFO | WARNING | ERROR")


def _check_inputs(cfg: PreprocessConfig) -> None:
    """A local ``anno_path`` / ``video_root`` that does not exist is a config mistake, reported before any work."""
    for name in ("anno_path", "video_root"):
        value = getattr(cfg, name)
        if value and "://" not in value and not os.path.exists(value):
            raise ConfigError(f"{name}={value}: no such file or folder")


def _present_splits(cfg: PreprocessConfig) -> list[str]:
    """The split names a CSV/JSONL annotation file holds (its ``split`` column); the split lists of the
    benchmark readers otherwise."""
    import csv
    import io
    import json

    from preprocess.annotations.common import read_text

    if cfg.dataset in ("csv", "jsonl"):
        text = read_text(cfg.anno_path)
        if cfg.dataset == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return sorted({str(r["split"]).strip() for r in rows if isinstance(r, dict) and r.get("split")})
    import importlib

    return list(getattr(importlib.import_module(f"preprocess.annotations.{cfg.dataset}"), "SPLITS", ()))


def _no_items(cfg: PreprocessConfig) -> str:
    present = _present_splits(cfg)
    listed = f"; splits present: {', '.join(present)}" if present else ""
    return f"anno_path={cfg.anno_path}: no {cfg.dataset} items for split {cfg.split!r}{listed}"


def _check_out(cfg: PreprocessConfig) -> None:
    """An object-store ``out`` whose bucket is missing or unreachable fails here, before any video is decoded."""
    if "://" not in cfg.out:
        return
    from shards import fs as sfs

    scheme, _, rest = cfg.out.partition("://")
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    try:
        ok = sfs.exists(bucket, cfg.storage)
    except Exception as e:  # noqa: BLE001 - credentials, endpoint, network: one line with the reason
        raise ConfigError(f"out={cfg.out}: cannot reach {bucket}: {type(e).__name__}: {e}") from None
    if not ok:
        raise ConfigError(f"out={cfg.out}: bucket {bucket} does not exist (create it first)")


def main(argv: list[str] | None = None) -> int:
    from preprocess.annotations import AnnotationError, load_items
    from preprocess.job import run_job

    try:
        cfg, args = nrconfig.parse_args(
            PreprocessConfig,
            argv,
            prog=PROG,
            description="Decode videos into WebDataset shards (format v1).",
            add_arguments=_options,
            load=load_config,
            config_dir="preprocess",
            epilog="example: nr-preprocess --config msrvtt video_root=data/msrvtt/videos out=shards/msrvtt",
        )
    except ConfigError as exc:
        return nrconfig.cli_error(PROG, exc)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _check_inputs(cfg)
        items = load_items(cfg.dataset, cfg.split, cfg.anno_path, cfg.video_root, video_ext=cfg.video_ext)
        if not items:
            raise ConfigError(_no_items(cfg))
        _check_out(cfg)
        summary = run_job(cfg, items)
    except (ConfigError, AnnotationError) as exc:
        return nrconfig.cli_error(PROG, exc)
    print(summary.line())  # noqa: T201
    if summary.manifest is not None:
        m = summary.manifest
        print(f"manifest: {m.get('inputs')} inputs = {m.get('ok')} ok + {m.get('failed')} failed")  # noqa: T201
    if summary.failed and not summary.ok:
        print(  # noqa: T201
            f"error: all {summary.failed} inputs this job decoded failed (see failures.jsonl in {cfg.out}); "
            "check video_root and the decoder",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
