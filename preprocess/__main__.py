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
import sys

import nrconfig
from preprocess.config import ConfigError, PreprocessConfig, load_config

__all__ = ["main", "PROG"]

PROG = "nr-preprocess"


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="INFO", help="DEBUG | INFO | WARNING | ERROR")


def main(argv: list[str] | None = None) -> int:
    from preprocess.annotations import AnnotationError
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
        summary = run_job(cfg)
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
