"""Every command in the user docs is exercised: the fenced ``bash`` blocks of ``docs/*.md`` are extracted and run.

Docs and test cannot drift because the commands are read from the markdown, never copied here. Each page's
``bash`` blocks run in order as ONE shell session (``set -euxo pipefail``; a failing command fails the page and the
message names the block's line), with cwd = a scratch copy of the repository root (the *sandbox*) and the venv's
``bin/`` first on PATH. Blocks marked ``text`` / ``console`` are not run (downloads, multi-node launches, slurm);
their ``training.train`` overrides, ``preprocess`` options and ``accelerate launch`` flags are still checked
against the code.

The sandbox mirrors the repository root: ``configs/`` (a symlink to the real folder), ``accelerate_config.yaml``
(the repository's file with ``num_processes: 2`` and fp32, run on CPU through ``ACCELERATE_USE_CPU=1``), ``data/``
(tiny generated videos + annotations: MSVD, DiDeMo and ActivityNet from ``tests/fixtures/annotations/``, with DiDeMo's
val/test json copied from train; MSR-VTT generated in the real format with 12 Training-9k videos x 2 captions and 6
1k-A rows, enough for a contrastive batch) and ``weights/ViT-B-32.pt`` (a TorchScript archive of a tiny random CLIP,
saved the way OpenAI's file is).

The documented substitutions (also listed at the end of each doc page):

- ``python -m preprocess ... --config FILE`` gets :data:`PREPROCESS_SIZES` right after ``--config FILE``;
- every ``training.train`` command gets :data:`TRAIN_OVERRIDES` appended, plus ``model.pretrained=null`` when it
  names no weights, and ``optim.max_steps=3`` instead of 2 when it resumes;
- ``accelerate launch`` gets ``--main_process_port <free port>``;
- ``http://minio.example.com:9000`` / ``YOUR_ACCESS_KEY_ID`` / ``YOUR_SECRET_ACCESS_KEY`` / ``s3://my-bucket``
  become the test S3 server (``moto_server`` on 127.0.0.1), its dummy credentials and a fresh bucket.

Pages depend on each other like a user's session does: training.md uses the shards of datasets.md, reports.md the
runs of training.md. Each page runs once per module (cached) and its test then checks the outputs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FIXTURES = REPO / "tests" / "fixtures" / "annotations"
PAGES = ("datasets.md", "training.md", "reports.md", "cluster.md", "own-videos.md", "search.md")
RUN_LANGS = ("bash",)
SKIP_LANGS = ("text", "console")

PREPROCESS_SIZES = "--num_workers 1 --num_frames 4 --frame_size 32 --progress false"
TRAIN_OVERRIDES = (
    "model.arch=nr-tiny model.max_frames=4 model.max_words=16 model.temporal_layers=1 data.frame_size=32 "
    "data.batch_size=4 data.eval_batch_size=4 data.num_workers=0 data.eval_num_workers=0 data.shuffle_buffer=8 "
    "loss.num_neighbors=1 bank.prefill_batches=1 optim.epochs=1 eval.every_steps=0 "
    "'run.mixed_precision=\"no\"' run.tensorboard=false run.progress=false"
)
S3_PLACEHOLDERS = ("http://minio.example.com:9000", "YOUR_ACCESS_KEY_ID", "YOUR_SECRET_ACCESS_KEY", "s3://my-bucket")

MSRVTT_TRAIN = [f"video{i}" for i in range(12)]
MSRVTT_TEST = [f"video{i}" for i in range(9770, 9776)]


# ----------------------------------------------------------------------------------------------------------------
# extraction and substitution (pure functions, unit-tested below)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One fenced block of a markdown page: its language tag, the 1-based line of its opening fence, its text."""

    page: str
    lang: str
    line: int
    text: str


def fenced_blocks(path: Path) -> list[Block]:
    """All fenced blocks of a markdown file, in order; an unclosed fence is an error."""
    blocks: list[Block] = []
    lang: str | None = None
    start = 0
    buf: list[str] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"^```\s*([\w-]*)\s*$", raw)
        if lang is None:
            if m:
                lang, start, buf = m.group(1), n, []
        elif raw.strip() == "```":
            blocks.append(Block(path.name, lang, start, "\n".join(buf) + "\n"))
            lang = None
        else:
            buf.append(raw)
    if lang is not None:
        raise ValueError(f"{path}: fence opened at line {start} is never closed")
    return blocks


def logical_commands(text: str) -> list[tuple[int, int, str]]:
    """``(first, last, command)`` per logical shell line (backslash continuations joined; 0-based physical line
    numbers); comment and blank lines are left out."""
    lines = text.splitlines()
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(lines):
        first, parts = i, []
        while True:
            line = lines[i]
            if line.rstrip().endswith("\\"):
                parts.append(line.rstrip()[:-1])
                i += 1
                if i < len(lines):
                    continue
            else:
                parts.append(line)
                i += 1
            break
        cmd = " ".join(p.strip() for p in parts).strip()
        if cmd and not cmd.startswith("#"):
            out.append((first, i - 1, cmd))
    return out


def is_train_command(cmd: str) -> bool:
    return bool(re.search(r"(-m\s+training\.train|\bnr-train)(\s|$)", cmd))


def train_overrides(cmd: str) -> str:
    """The overrides appended to one training command (see the module docstring)."""
    extra = TRAIN_OVERRIDES + (" optim.max_steps=3" if "--resume" in cmd else " optim.max_steps=2")
    if "model.pretrained=" not in cmd:
        extra += " model.pretrained=null"
    return extra


def substitute(text: str, *, port: int, s3: dict[str, str] | None = None) -> str:
    """Apply the documented substitutions to the text of a bash block."""
    for placeholder, value in (s3 or {}).items():
        text = text.replace(placeholder, value)
    text = re.sub(r"\baccelerate launch\b", f"accelerate launch --main_process_port {port}", text)
    text = re.sub(r"(python -m preprocess\b[^\n]*?--config\s+\S+)", rf"\1 {PREPROCESS_SIZES}", text)
    lines = text.splitlines()
    for _first, last, cmd in logical_commands(text):
        if is_train_command(cmd):
            if re.search(r"[;|&>]|\bdo\b|\bdone\b", cmd.replace("ACCELERATE_USE_CPU=1", "")):
                raise ValueError(f"training command must be a simple command to receive overrides: {cmd!r}")
            lines[last] = lines[last] + " " + train_overrides(cmd)
    return "\n".join(lines) + "\n"


def page_script(page: str, *, port: int, s3: dict[str, str] | None = None) -> str:
    """The shell session of one page: its bash blocks, substituted, each announced on stderr."""
    parts = ["set -euxo pipefail"]
    for b in fenced_blocks(DOCS / page):
        if b.lang in RUN_LANGS:
            parts.append(f"echo '>>> {page} block at line {b.line}' >&2")
            parts.append(substitute(b.text, port=port, s3=s3))
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# the sandbox
# ----------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_video(path: Path, i: int, ext_args: list[str]) -> None:
    """A 2 s, 8 fps, 64x48 test-pattern clip whose colours depend on ``i`` (so no two clips are identical)."""
    from preprocess.decode import ffmpeg_binary

    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size=64x48:rate=8:duration=2,hue=h={(i * 37) % 360}:s={1 + i % 3}", *ext_args,
         "-threads", "1", str(path)],
        check=True, capture_output=True, timeout=60,
    )


def _write_msrvtt(anno: Path) -> None:
    """MSR-VTT annotations in the real format (json + 9k csv + JSFusion csv), headers as in the fixtures."""
    anno.mkdir(parents=True)
    sentences = [{"caption": f"clip number {i} shows pattern {c}", "video_id": vid, "sen_id": 2 * i + c}
                 for i, vid in enumerate(MSRVTT_TRAIN) for c in range(2)]
    videos = [{"video_id": v, "split": "train", "id": i} for i, v in enumerate(MSRVTT_TRAIN)]
    (anno / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    header = (FIXTURES / "msrvtt" / "MSRVTT_train.9k.csv").read_text().splitlines()[0]
    (anno / "MSRVTT_train.9k.csv").write_text(header + "\n" + "".join(v + "\n" for v in MSRVTT_TRAIN))
    header = (FIXTURES / "msrvtt" / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[0]
    rows = [f"ret{i},msr{v[5:]},{v},a test clip of pattern {i}" for i, v in enumerate(MSRVTT_TEST)]
    (anno / "MSRVTT_JSFUSION_test.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def _write_tiny_openai_archive(path: Path) -> None:
    """A TorchScript archive holding a tiny random CLIP's weights under OpenAI's key names.

    fp32, unlike OpenAI's fp16 file: the tests run the model at 32 px instead of the archive's 64 px, and
    interpolating fp16 position embeddings on CPU is not implemented in torch.
    """
    import open_clip
    import torch
    from torch import nn

    from training.encoders import register_presets

    register_presets()
    torch.manual_seed(0)
    clip = open_clip.create_model("nr-tiny-quickgelu", pretrained=None)

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    holder = Holder()
    for name, child in clip.named_children():
        holder.add_module(name, child)
    for name, p in clip.named_parameters(recurse=False):
        holder.register_parameter(name, p)
    for name, b in clip.named_buffers(recurse=False):
        holder.register_buffer(name, b)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(holder, torch.zeros(1), check_trace=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path))


@dataclass
class Sandbox:
    root: Path
    port: int
    results: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg",
        })
        return env

    def run_page(self, page: str, s3: dict[str, str] | None = None, needs: tuple[str, ...] = ()) -> None:
        """Run a page's bash session once (cached); fail with the tail of its output if any command fails."""
        for dep in needs:
            self.run_page(dep)
        if page not in self.results:
            script = page_script(page, port=self.port, s3=s3)
            self.results[page] = subprocess.run(["bash", "-c", script], cwd=self.root, env=self.env(),
                                                capture_output=True, text=True, timeout=900)
        proc = self.results[page]
        if proc.returncode != 0:
            blocks = re.findall(r">>> (\S+ block at line \d+)", proc.stderr)
            where = blocks[-1] if blocks else page
            errors = [ln for ln in proc.stderr.splitlines() if re.search(r"Error|error:|^\+ ", ln)][-25:]
            pytest.fail(f"docs/{page}: a command failed (exit {proc.returncode}) in {where}:\n"
                        f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-4000:]}\n"
                        "--- commands run and error lines\n" + "\n".join(errors))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    import yaml

    root = tmp_path_factory.mktemp("docs_sandbox")
    (root / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    acc = yaml.safe_load((REPO / "accelerate_config.yaml").read_text())
    for key in ("num_processes", "mixed_precision", "main_process_port", "distributed_type"):
        assert key in acc, f"accelerate_config.yaml lacks {key!r}"
    acc.update(num_processes=2, mixed_precision="no", distributed_type="MULTI_GPU", use_cpu=False)
    (root / "accelerate_config.yaml").write_text(yaml.safe_dump(acc))

    data = root / "data"
    mp4 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    n = 0

    def video(path: Path, args: list[str] = mp4) -> None:
        nonlocal n
        n += 1
        _make_video(path, n, args)

    _write_msrvtt(data / "msrvtt" / "anno")
    for vid in MSRVTT_TRAIN + MSRVTT_TEST:
        video(data / "msrvtt" / "videos" / f"{vid}.mp4")
    shutil.copytree(FIXTURES / "msvd", data / "msvd" / "anno")
    for i in range(1, 7):  # MSVD clips are .avi, anywhere below video_root
        video(data / "msvd" / "videos" / "YouTubeClips" / f"vid{i}.avi", ["-c:v", "mpeg4"])
    shutil.copytree(FIXTURES / "didemo", data / "didemo" / "anno")
    for split in ("val", "test"):
        shutil.copyfile(FIXTURES / "didemo" / "train_data.json", data / "didemo" / "anno" / f"{split}_data.json")
    for m in json.loads((FIXTURES / "didemo" / "train_data.json").read_text()):
        if not (data / "didemo" / "videos" / f"{m['video']}.mp4").exists():
            video(data / "didemo" / "videos" / f"{m['video']}.mp4")
    shutil.copytree(FIXTURES / "activitynet", data / "activitynet" / "anno")
    for name in ("train.json", "val_1.json"):
        for vid in json.loads((FIXTURES / "activitynet" / name).read_text()):
            video(data / "activitynet" / "videos" / f"{vid}.mp4")
    _write_tiny_openai_archive(root / "weights" / "ViT-B-32.pt")
    return Sandbox(root=root, port=_free_port())


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


# ----------------------------------------------------------------------------------------------------------------
# fast checks: extraction, substitution, and the commands that are not run
# ----------------------------------------------------------------------------------------------------------------
def test_every_page_has_runnable_blocks_and_only_known_fences():
    for page in PAGES:
        blocks = fenced_blocks(DOCS / page)
        langs = {b.lang for b in blocks}
        assert langs <= set(RUN_LANGS + SKIP_LANGS), f"{page}: unknown fence languages {langs}"
        assert any(b.lang == "bash" for b in blocks), f"{page} has no bash block"


def test_fenced_blocks_and_logical_commands(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("intro\n```bash\necho a \\\n  b\n# note\n\nls\n```\n\n```text\nno\n```\n")
    blocks = fenced_blocks(md)
    assert [(b.lang, b.line) for b in blocks] == [("bash", 2), ("text", 10)]
    assert logical_commands(blocks[0].text) == [(0, 1, "echo a b"), (4, 4, "ls")]
    md.write_text("```bash\nls\n")
    with pytest.raises(ValueError, match="never closed"):
        fenced_blocks(md)


def test_substitute_inserts_sizes_and_overrides_where_documented():
    text = ("for s in train val; do\n  python -m preprocess --config configs/preprocess/msrvtt.yaml --split $s\n"
            "done\naccelerate launch --config_file a.yaml -m training.train --config c.yaml \\\n"
            "  --resume latest model.pretrained=w.pt\npython -m training.train --config c.yaml\n"
            "aws s3 ls s3://my-bucket/x\n")
    out = substitute(text, port=1234, s3={"s3://my-bucket": "s3://test-abc"})
    lines = out.splitlines()
    assert lines[1] == ("  python -m preprocess --config configs/preprocess/msrvtt.yaml " + PREPROCESS_SIZES
                        + " --split $s")
    assert lines[3].startswith("accelerate launch --main_process_port 1234 --config_file a.yaml")
    assert lines[4].endswith("optim.max_steps=3") and "model.pretrained=null" not in lines[4]
    assert lines[5].endswith("optim.max_steps=2 model.pretrained=null")
    assert lines[6] == "aws s3 ls s3://test-abc/x"
    # the appended overrides parse as the trainer parses them
    argv = shlex.split(lines[5])
    assert "run.mixed_precision=\"no\"" in argv
    with pytest.raises(ValueError, match="simple command"):
        substitute("python -m training.train --config c.yaml | tee log\n", port=1)


def test_relative_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+?)(?:#[^)]*)?\)", (DOCS / page).read_text(encoding="utf-8")):
            assert (DOCS / target).resolve().exists(), f"docs/{page}: broken link {target}"


def _commands(kind: str) -> list[tuple[Block, str]]:
    out = []
    for page in PAGES:
        for b in fenced_blocks(DOCS / page):
            for _f, _l, cmd in logical_commands(b.text):
                if kind == "train" and is_train_command(cmd):
                    out.append((b, cmd))
                elif kind == "preprocess" and re.search(r"python -m preprocess\b", cmd):
                    out.append((b, cmd))
                elif kind == "accelerate" and "accelerate launch" in cmd:
                    out.append((b, cmd))
    return out


def _tokens(cmd: str) -> list[str]:
    """Shell words of a command with $VARS replaced by 0 (for option checks of commands that are not run)."""
    words = shlex.split(re.sub(r"\$\(\([^)]*\)\)|\$\{?\w+\}?", "0", cmd))
    # a command quoted inside another (``srun bash -c '...'``) is split into its own words
    return [t for w in words for t in (shlex.split(w) if " " in w else [w])]


def test_training_overrides_in_all_blocks_match_the_config_schema():
    from training.config import load_config

    cmds = _commands("train")
    assert len(cmds) >= 5
    for block, cmd in cmds:
        words = _tokens(cmd)
        words = words[words.index("training.train") + 1:] if "training.train" in words else words[1:]
        config = words[words.index("--config") + 1]
        overrides = [w for w in words if "=" in w and not w.startswith("-")]
        try:
            load_config(config, overrides)
        except Exception as e:  # noqa: BLE001 - report which doc line is wrong
            pytest.fail(f"docs/{block.page} block at line {block.line}: {cmd!r}: {e}")


def test_preprocess_options_in_all_blocks_are_config_fields():
    from preprocess.config import PreprocessConfig, parse_overrides

    fields = {f for f in PreprocessConfig.__dataclass_fields__} | {"config", "log_level"}
    cmds = _commands("preprocess")
    assert len(cmds) >= 6
    for block, cmd in cmds:
        words = _tokens(cmd)
        words = words[words.index("preprocess") + 1:]
        words = words[: next((i for i, w in enumerate(words) if w in (";", "&&")), len(words))]
        config = words[words.index("--config") + 1]
        assert (REPO / config).is_file(), f"docs/{block.page} line {block.line}: no config file {config}"
        for key, _value in parse_overrides(words):
            key = key.replace("-", "_").split(".")[0]
            assert key in fields, f"docs/{block.page} line {block.line}: unknown preprocess option --{key}"


def test_accelerate_flags_in_all_blocks_exist():
    help_text = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    cmds = _commands("accelerate")
    assert len(cmds) >= 4
    for block, cmd in cmds:
        words = _tokens(cmd)
        words = words[words.index("launch") + 1: words.index("-m")]
        for w in words:
            if w.startswith("--"):
                assert re.search(rf"\s{re.escape(w)}[\s,=]", help_text), (
                    f"docs/{block.page} line {block.line}: accelerate launch has no flag {w}")


# ----------------------------------------------------------------------------------------------------------------
# the pages, run
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_datasets_page_runs(sandbox):
    sandbox.run_page("datasets.md")
    shards = sandbox.root / "data"
    expected = {
        "msrvtt_shards/train": 12, "msrvtt_shards/val": 6, "msrvtt_shards/test": 6,
        "msvd_shards/train": 3, "msvd_shards/val": 1, "msvd_shards/test": 2,
        "didemo_shards/train": 3, "didemo_shards/val": 3, "didemo_shards/test": 3,
        "activitynet_shards/train": 3, "activitynet_shards/val": 2,
        "msrvtt_heldout_shards/train": 11, "msrvtt_heldout_shards/val": 1,
    }
    for split, ok in expected.items():
        m = _manifest(shards / split)
        assert (m["inputs"], m["ok"], m["failed"]) == (ok, ok, 0), (split, m)
        assert m["frames_per_sample"] == 4 and m["frame_size"] == [32, 32], (split, m)
    # the id-list derivation of section 2 reproduced the fixtures' lists
    assert (shards / "didemo" / "anno" / "train_list.txt").read_text() == \
        (FIXTURES / "didemo" / "train_list.txt").read_text()
    ids = json.loads((shards / "activitynet" / "anno" / "val_ids.json").read_text())
    assert sorted(ids) == sorted(json.loads((FIXTURES / "activitynet" / "val_ids.json").read_text()))


@pytest.mark.slow
def test_training_page_runs(sandbox):
    sandbox.run_page("training.md", needs=("datasets.md",))
    run = sandbox.root / "runs" / "msrvtt"
    assert "TorchScript" in (run / "train.log").read_text()  # weights/ViT-B-32.pt was loaded as OpenAI's file
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2, 3], steps  # 2 steps, then 1 more after --resume latest
    assert (run / "checkpoints" / "step-00000003").is_dir()
    selection = json.loads((run / "best" / "selection.json").read_text())
    assert selection["split"] == "val"

    from eval.scores_io import load_scores

    for path, n in ((run / "test_scores.npz", 6), (run / "val_scores.npz", 6),
                    (sandbox.root / "runs" / "msrvtt-infonce" / "test_scores.npz", 6)):
        ss = load_scores(path)
        assert ss.scores.shape == (n, n), path
    stdout = sandbox.results["training.md"].stdout
    assert "configuration OK" in stdout and "test/t2v/R@1 = " in stdout
    scored = [ln for ln in stdout.splitlines() if ln.startswith("nr-score:")]
    assert len(scored) == 3 and "local similarity" in scored[0] and "pooled similarity" in scored[2], scored


@pytest.mark.slow
def test_reports_page_runs(sandbox):
    sandbox.run_page("reports.md", needs=("datasets.md", "training.md"))
    runs = sandbox.root / "runs" / "msrvtt"
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    for key in ("test/t2v/R@1", "test/t2v/R@1_opt", "test/t2v/R@1_pess", "test/t2v/R@1_ci_lo",
                "test/v2t/MnR", "test/clip4clip/t2v/R@1", "test/hub/t2v/k5/skew", "test/mean_R@1"):
        assert key in metrics, key
    assert metrics["test/t2v/R@1_pess"] <= metrics["test/t2v/R@1"] <= metrics["test/t2v/R@1_opt"]
    assert (runs / "eval" / "report.md").read_text().startswith("# ")
    dsl = json.loads((runs / "eval-dsl" / "metrics.json").read_text())
    assert "test/posthoc/dsl/t2v/R@1" in dsl and "test/posthoc/dsl/param/temperature" in dsl
    assert "transductive" in (runs / "eval-dsl" / "report.md").read_text()
    bank = json.loads((runs / "eval-bank" / "metrics.json").read_text())
    for method in ("qbnorm", "is", "csls", "nnn"):
        assert f"test/posthoc/{method}/t2v/R@1" in bank, method
    cmp_ = json.loads((runs / "compare" / "metrics.json").read_text())
    assert "test/compare/infonce/t2v/dR@1" in cmp_ and "test/compare/infonce/v2t/dR@1_p" in cmp_
    assert set(json.loads((runs / "compare" / "comparison.json").read_text())) == {"neighborretr", "infonce"}


@pytest.mark.slow
def test_cluster_page_runs(sandbox, s3_server, s3_bucket):
    s3 = dict(zip(S3_PLACEHOLDERS, (s3_server, "testing", "testing", s3_bucket)))
    sandbox.run_page("cluster.md", s3=s3)
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        m = json.loads(fs.cat(f"{s3_bucket}/msrvtt/{split}/manifest.json"))
        assert (m["ok"], m["failed"]) == (n, 0)
    run = sandbox.root / "runs" / "msrvtt-s3"
    cfg = (run / "config.yaml").read_text()
    assert f"root: {s3_bucket}/msrvtt" in cfg
    assert (run / "best" / "pytorch_model.bin").is_file() and (run / "test_scores.npz").is_file()


def test_every_page_with_bash_blocks_is_run():
    with_bash = {p.name for p in DOCS.glob("*.md") if any(b.lang == "bash" for b in fenced_blocks(p))}
    assert with_bash <= set(PAGES), f"pages whose bash blocks no test runs: {sorted(with_bash - set(PAGES))}"


def test_own_videos_page_runs(sandbox):
    sandbox.run_page("own-videos.md")
    root = sandbox.root
    for split, n in (("my_shards/train", 3), ("my_shards/val", 1), ("my_shards_jsonl/train", 3)):
        m = _manifest(root / split)
        assert (m["inputs"], m["ok"], m["failed"]) == (n, n, 0), (split, m)
        assert m["frames_per_sample"] == 4 and m["frame_size"] == [32, 32], (split, m)
    import tarfile

    samples = {}
    for tar in sorted((root / "my_shards" / "train").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(member).read())
                    samples[(meta["video_id"], meta["start"], meta["end"])] = meta["captions"]
    assert samples == {
        ("clip1", None, None): ["a colourful test pattern", "moving colour bars with a clock"],
        ("clip2", 0.0, 3.0): ["the first half of a test pattern"],
        ("clip2", 3.0, 6.0): ["the second half of a test pattern"],
    }
    web = _manifest(root / "my_shards_web" / "train")
    assert (web["inputs"], web["ok"], web["failed"]) == (3, 2, 1), web
    failures = [json.loads(x) for f in (root / "my_shards_web" / "train").glob("*.failures.jsonl")
                for x in f.read_text().splitlines() if x.strip()]
    assert [(f["video_id"], f["input"].rsplit("/", 1)[-1]) for f in failures] == [("1003", "missing.mp4")]


def test_search_page_has_runnable_blocks():
    blocks = fenced_blocks(REPO / "docs" / "search.md")
    assert sum(b.lang == "bash" for b in blocks) == 4


@pytest.mark.slow
def test_search_page_runs(sandbox):
    sandbox.run_page("search.md", needs=("datasets.md", "training.md"))
    run = sandbox.root / "runs" / "msrvtt"
    manifest = json.loads((run / "index" / "manifest.json").read_text())
    assert manifest["videos"] == 6 and manifest["bank"]["queries"] == 24
    hits = json.loads((run / "hits.json").read_text())
    assert [h["query"] for h in hits] == ["a man is singing", "a dog runs on the grass"]
    assert all(len(h["results"]) == 2 for h in hits)
    api = json.loads((run / "api_hits.json").read_text())
    assert len(api["results"]) == 3 and api["results"][0]["thumbnail"].startswith("/thumb/")
    assert "query: a man is singing" in sandbox.results["search.md"].stdout
