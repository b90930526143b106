"""``python -m preprocess --config configs/preprocess/X.yaml [--key value ...]``: run the shard job.

Every field of :class:`preprocess.config.PreprocessConfig` can be overridden (``--num_workers 8``,
``--out s3://bucket/prefix``, ``--storage.endpoint_url http://minio:9000``). Parallel jobs on several machines:
give each ``--num_jobs N --job_index J`` (same command otherwise), then run ``python -m shards.index ROOT/SPLIT``.
Re-running the same command resumes: complete shards are skipped, incomplete ones rewritten.

Exit codes: 0 done (failed inputs are listed in the failures sidecars), 1 every input this job decoded failed
(a wrong ``video_root`` or a broken decoder, not bad videos; the failure rows name the reasons), 2 bad config or
annotations.
"""

from __future__ import annotations

import argparse
import logging
import sys

from preprocess.config import ConfigError, load_config, parse_overrides

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess",
        description="Decode videos into WebDataset shards (format v1). Extra --key value pairs override the config.",
    )
    parser.add_argument("--config", help="YAML file with PreprocessConfig fields")
    parser.add_argument("--log-level", default="INFO")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from preprocess.annotations import AnnotationError
    from preprocess.job import run_job

    try:
        cfg = load_config(args.config, parse_overrides(rest))
        summary = run_job(cfg)
    except (ConfigError, AnnotationError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
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
