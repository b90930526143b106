"""Every console script: ``--help`` documents every config key, ``--version`` works, and the ordinary
mistakes of a new user end with exit code 2, one message naming the input and the problem, no traceback and
nothing written. Each command runs in a subprocess through its ``[project.scripts]`` entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from train_fixtures import REPO, tiny_config_text, write_split

import nrconfig
from preprocess.config import PreprocessConfig
from training.config import TrainConfig, save_config


def _scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml (read as text: tomllib needs Python 3.11)."""
    text = open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8").read()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, flags=re.M))


SCRIPTS = _scripts()


def run_script(
    name: str, *args: str, cwd: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``name ARGS`` exactly as the installed console script runs it (``module:function`` of pyproject)."""
    module, _, func = SCRIPTS[name].partition(":")
    code = f"import sys; from {module} import {func}; sys.exit({func}())"
    env = dict(
        os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_script_is_listed():
    assert set(SCRIPTS) == {
        "nr-preprocess",
        "nr-synth",
        "nr-shards-verify",
        "nr-shards-index",
        "nr-train",
        "nr-score",
        "nr-eval",
        "nr-index",
        "nr-search",
    }


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_version(name):
    p = run_script(name, "--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().startswith(name + " ") and p.stdout.strip().split()[1][0].isdigit()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_describes_every_option(name):
    p = run_script(name, "--help")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "--version" in p.stdout
    schema = {"nr-train": TrainConfig, "nr-preprocess": PreprocessConfig}.get(name)
    undocumented = [e for e in _help_entries(p.stdout) if not e[1]]
    assert not undocumented, f"--help of {name}: options without a description: {undocumented}"
    if schema is None:
        return
    keys = nrconfig.describe(schema)
    assert len(keys) > 15
    for k in keys:
        assert k.help, f"{k.key} has no description in its schema"
        line = f"  {k.key} ({k.type}, default {k.default!r}): {k.help}"
        assert line in p.stdout.splitlines(), f"--help of {name} lacks {line!r}"


def _help_entries(text: str) -> list[tuple[str, str]]:
    """``(invocation, help)`` of every argument argparse lists (help on the same line after 2+ spaces, or on
    the more indented lines below)."""
    import re

    entries: list[list[str]] = []
    section = False
    for line in text.splitlines():
        if line in ("options:", "positional arguments:"):
            section = True
            continue
        if section and not line.strip():
            section = False
            continue
        if not section:
            continue
        m = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m and not line.startswith("   "):
            entries.append([m.group(1), m.group(2) or ""])
        elif entries:
            entries[-1][1] += " " + line.strip()
    return [(a, h.strip()) for a, h in entries]


def test_help_reads_all_three_description_styles():
    docs = {d.key: d.help for d in nrconfig.describe(TrainConfig)}
    assert docs["optim.lr"] == "non-CLIP modules"  # trailing comment
    assert docs["model.max_words"].startswith("Text positions incl. SOT and EOT")  # attribute docstring
    assert docs["loss.beta"].startswith("Sinkhorn/identity mix")  # `name: text` in the class docstring
    assert docs["loss.kl_weight"].startswith("weights of L_Opt, L_Nbi, L_KL")  # `a, b, c: text`
    assert docs["data.frames"].startswith('batch frames: "float"')  # comment block above the field


def test_print_config_and_shipped_names(tmp_path):
    p = run_script("nr-train", "--config", "demo", "optim.lr=0.5", "--print-config", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    import yaml

    tree = yaml.safe_load(p.stdout)
    assert tree["optim"]["lr"] == 0.5 and tree["run"]["out"] == "runs/demo" and not os.listdir(tmp_path)
    p = run_script("nr-preprocess", "--config", "msrvtt", "num_frames=8", "--print-config", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert yaml.safe_load(p.stdout)["dataset"] == "msrvtt" and yaml.safe_load(p.stdout)["num_frames"] == 8
    assert nrconfig.resolve_config_path("accelerate", "launch").endswith("accelerate.yaml")


def test_old_spelling_still_works_with_a_warning(tmp_path):
    p = run_script(
        "nr-preprocess", "--config", "msrvtt", "--num-frames", "8", "--split=val", "--print-config"
    )
    assert p.returncode == 0, p.stderr
    import yaml

    assert (yaml.safe_load(p.stdout)["num_frames"], yaml.safe_load(p.stdout)["split"]) == (8, "val")
    assert "--num-frames VALUE is deprecated, write num_frames=VALUE" in p.stderr
    assert "--split VALUE is deprecated, write split=VALUE" in p.stderr


# -- mistakes ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Inputs a new user has: a CSV of one real video, fixture shards, a run config, a fake checkpoint."""
    base = tmp_path_factory.mktemp("cli")
    root = str(base / "shards")
    items = [("red", "blue", i) for i in range(4)]
    write_split(root, "train", items, shard_size=4)
    write_split(root, "val", items, shard_size=4)
    cfg_path = base / "train.yaml"
    cfg_path.write_text(tiny_config_text(root, str(base / "unused-run")))
    anno = base / "anno.csv"
    anno.write_text("video_path,caption,split\nclip.mp4,a clip,train\n")
    ckpt = base / "ckpt"
    ckpt.mkdir()
    from training.config import load_config

    save_config(load_config(str(cfg_path)), str(ckpt / "config.yaml"))
    (ckpt / "pytorch_model.bin").write_bytes(b"")  # never read: the mistake is found before the model loads
    empty = base / "empty_split"
    empty.mkdir()
    return {
        "base": str(base),
        "root": root,
        "cfg": str(cfg_path),
        "anno": str(anno),
        "ckpt": str(ckpt),
        "empty": str(empty),
    }


MISTAKES = [
    # (id, script, args (with {placeholders}), expected message)
    (
        "dataset-case",
        "nr-preprocess",
        ["dataset=CSV", "anno_path={anno}", "video_root={base}", "out={out}"],
        "dataset 'CSV' is not one of msrvtt, msvd, didemo, activitynet, csv, jsonl (did you mean 'csv'?)",
    ),
    (
        "dataset-name",
        "nr-preprocess",
        ["dataset=webvid", "anno_path={anno}", "out={out}"],
        "dataset 'webvid' is not one of",
    ),
    (
        "split-absent",
        "nr-preprocess",
        ["dataset=csv", "anno_path={anno}", "video_root={base}", "out={out}", "split=test"],
        "anno_path={anno}: no csv items for split 'test'; splits present: train",
    ),
    (
        "video-root",
        "nr-preprocess",
        ["dataset=csv", "anno_path={anno}", "video_root={base}/vids", "out={out}"],
        "video_root={base}/vids: no such file or folder",
    ),
    (
        "anno-path",
        "nr-preprocess",
        ["dataset=csv", "anno_path={base}/anno.cvs", "out={out}"],
        "anno_path={base}/anno.cvs: no such file or folder",
    ),
    (
        "preprocess-key",
        "nr-preprocess",
        ["dataset=csv", "anno_path={anno}", "out={out}", "num_framez=8"],
        "unknown config key 'num_framez' (did you mean 'num_frames'",
    ),
    (
        "preprocess-type",
        "nr-preprocess",
        ["dataset=csv", "anno_path={anno}", "out={out}", "num_frames=many"],
        "num_frames: Value 'many' of type 'str' could not be converted to Integer",
    ),
    (
        "preprocess-config-name",
        "nr-preprocess",
        ["--config", "msrvt", "out={out}"],
        "cannot read config file 'msrvt': no such file, and not a shipped config (did you mean msrvtt",
    ),
    (
        "train-key",
        "nr-train",
        ["--config", "{cfg}", "optim.lrr=1", "run.out={out}"],
        "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)",
    ),
    (
        "train-option",
        "nr-train",
        ["--config", "{cfg}", "--resum", "latest", "run.out={out}"],
        "unknown option --resum (did you mean --resume",
    ),
    (
        "train-config-name",
        "nr-train",
        ["--config", "demoo", "run.out={out}"],
        "not a shipped config (did you mean demo",
    ),
    (
        "train-resume",
        "nr-train",
        ["--config", "{cfg}", "--resume", "{base}/nope", "run.out={out}"],
        "--resume {base}/nope: not a complete checkpoint (not a folder)",
    ),
    (
        "train-no-shards",
        "nr-train",
        ["--config", "{cfg}", "data.root={base}/shardz", "run.out={out}"],
        "data.train: no shards at {base}/shardz/train",
    ),
    (
        "score-split",
        "nr-score",
        ["--checkpoint", "{ckpt}", "--split", "tset", "--out", "{out}/s.npz"],
        "--split tset: no shards at {root}/tset",
    ),
    (
        "score-run",
        "nr-score",
        ["--run", "{base}/runz", "--out", "{out}/s.npz"],
        "--run '{base}/runz': neither best/ nor checkpoints/step-* found",
    ),
    ("synth-count", "nr-synth", ["--out", "{out}", "--num-train", "-1"], "argument --num-train: must be >= 0, got -1"),
    (
        "verify-missing",
        "nr-shards-verify",
        ["{base}/shards/trian"],
        "split folder '{base}/shards/trian' does not exist",
    ),
    ("verify-empty", "nr-shards-verify", ["{empty}"], "split folder '{empty}' has no shards"),
    (
        "index-missing",
        "nr-shards-index",
        ["{base}/shards/trian"],
        "split folder '{base}/shards/trian' does not exist",
    ),
]


@pytest.mark.parametrize("case", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_exit_2_with_one_message(world, case, tmp_path):
    _, script, args, message = case
    out = str(tmp_path / "out")
    fill = dict(world, out=out)
    p = run_script(script, *[a.format(**fill) for a in args], cwd=str(tmp_path))
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    errors = [ln for ln in p.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and errors[0].startswith(f"{script}: error: "), p.stderr
    assert message.format(**fill) in p.stderr, p.stderr  # (validate_config lists several problems below)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # nothing written (not even the out folder)


def test_missing_bucket_exit_2(s3_server, tmp_path, world):
    p = run_script(
        "nr-preprocess",
        "dataset=csv",
        f"anno_path={world['anno']}",
        f"video_root={world['base']}",
        "out=s3://no-such-bucket-13/shards",
        f"storage.endpoint_url={s3_server}",
        cwd=str(tmp_path),
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "out=s3://no-such-bucket-13/shards: bucket s3://no-such-bucket-13 does not exist" in p.stderr
    assert os.listdir(tmp_path) == []


def test_a_job_whose_every_input_fails_writes_no_shard(tmp_path, world):
    out = tmp_path / "out"
    p = run_script(
        "nr-preprocess",
        "dataset=csv",
        f"anno_path={world['anno']}",
        f"video_root={world['base']}",
        f"out={out}",
        "progress=false",
        "num_workers=1",
        cwd=str(tmp_path),
    )
    assert p.returncode == 1, p.stderr  # clip.mp4 is not in base: every input fails
    names = sorted(os.listdir(out / "train"))
    assert names == ["train-000000.failures.jsonl"]  # the reasons are kept; no tar, no stats, no index
    row = json.loads((out / "train" / names[0]).read_text().splitlines()[0])
    assert row["reason"].startswith("missing file:")
