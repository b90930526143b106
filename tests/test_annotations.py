"""Annotation readers: exact items from fixtures in the real formats, the real MSR-VTT csvs, and every error."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from preprocess.annotations import DATASETS, AnnotationError, load_items
from preprocess.annotations.activitynet import load_activitynet
from preprocess.annotations.msrvtt import read_csv_rows
from preprocess.annotations.msvd import RestrictedUnpickler, read_raw_captions
from preprocess.items import VideoItem

FIX = Path(__file__).parent / "fixtures" / "annotations"
REAL_MSRVTT = (
    FIX / "msrvtt_real"
)  # verbatim copies of the real MSRVTT_JSFUSION_test.csv and MSRVTT_train.9k.csv


def touch(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def test_datasets_and_unknown_dataset():
    assert DATASETS == ("msrvtt", "msvd", "didemo", "activitynet", "csv", "jsonl")
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'"):
        load_items("kinetics", "train", str(FIX), "/v")


# ---------------------------------------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_train_groups_all_json_captions_per_video_in_json_order():
    items = load_items("msrvtt", "train", str(FIX / "msrvtt"), "/videos")
    assert items == [
        VideoItem(
            "msrvtt",
            "train",
            "video0",
            "/videos/video0.mp4",
            ("a woman is singing", "a crowd watches a concert", "a singer performs on stage"),
        ),
        VideoItem(
            "msrvtt", "train", "video1", "/videos/video1.mp4", ("a man drives a car", "a car on a road")
        ),
        VideoItem("msrvtt", "train", "video2", "/videos/video2.mp4", ("someone cooks pasta",)),
    ]


@pytest.mark.parametrize("split", ["test", "val"])
def test_msrvtt_test_and_val_are_one_item_per_1kA_row(split):
    items = load_items("msrvtt", split, str(FIX / "msrvtt"), "s3://b/vids", video_ext=".webm")
    assert items == [
        VideoItem(
            "msrvtt",
            split,
            "video9770",
            "s3://b/vids/video9770.webm",
            ("a person is connecting something to system",),
        ),
        VideoItem(
            "msrvtt", split, "video9771", "s3://b/vids/video9771.webm", ("a little girl does gymnastics",)
        ),
        VideoItem("msrvtt", split, "video7606", "s3://b/vids/video7606.webm", ("a man, in a hat, talks",)),
    ]


def test_msrvtt_anno_path_may_name_a_file_of_the_folder():
    via_file = load_items("msrvtt", "train", str(FIX / "msrvtt" / "MSRVTT_data.json"), "/videos")
    assert via_file == load_items("msrvtt", "train", str(FIX / "msrvtt"), "/videos")
    assert len(via_file) == 3


def test_msrvtt_real_1kA_csv():
    items = load_items("msrvtt", "test", str(REAL_MSRVTT), "/v")
    with open(REAL_MSRVTT / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(items) == 1000
    assert len({it.captions[0] for it in items}) == 995
    assert len({it.video_id for it in items}) == 1000
    assert [(it.video_id, it.captions) for it in items] == [(r[2], (r[3].strip(),)) for r in rows]
    assert items[0] == VideoItem(
        "msrvtt", "test", "video9770", "/v/video9770.mp4", ("a person is connecting something to system",)
    )


def test_msrvtt_real_9k_csv(tmp_path):
    rows = read_csv_rows(str(REAL_MSRVTT / "MSRVTT_train.9k.csv"), ("video_id",))
    ids = [r["video_id"] for _, r in rows]
    assert len(ids) == len(set(ids)) == 9000
    assert rows[0] == (2, {"video_id": "video0"})
    # The 9k csv with a generated MSRVTT_data.json (two captions per video, interleaved) reads in csv order.
    shutil.copy(REAL_MSRVTT / "MSRVTT_train.9k.csv", tmp_path)
    sentences = [{"video_id": v, "caption": f"{v} first", "sen_id": i} for i, v in enumerate(ids)]
    sentences += [{"video_id": v, "caption": f"{v} second", "sen_id": 9000 + i} for i, v in enumerate(ids)]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences[::-1]}))
    items = load_items("msrvtt", "train", str(tmp_path), "/v")
    assert [it.video_id for it in items] == ids
    assert items[5].captions == (f"{ids[5]} second", f"{ids[5]} first")


def test_msrvtt_errors(tmp_path):
    d = copy_fixture("msrvtt", tmp_path)
    (d / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo99\n")
    with pytest.raises(
        AnnotationError, match=r"MSRVTT_train\.9k\.csv, line 3: video_id 'video99' has no caption"
    ):
        load_items("msrvtt", "train", str(d), "/v")
    (d / "MSRVTT_train.9k.csv").write_text("vid\nvideo0\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_train\.9k\.csv, line 1: missing column\(s\) video_id"):
        load_items("msrvtt", "train", str(d), "/v")
    (d / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo0\n")
    with pytest.raises(AnnotationError, match=r"line 3: video_id 'video0' repeated \(first on line 2\)"):
        load_items("msrvtt", "train", str(d), "/v")
    (d / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,m,video1,ok\nret1,m,video2,  \n"
    )
    with pytest.raises(AnnotationError, match=r"MSRVTT_JSFUSION_test\.csv, line 3: empty caption"):
        load_items("msrvtt", "test", str(d), "/v")
    (d / "MSRVTT_JSFUSION_test.csv").write_text("key,video_id,sentence\nret0,video1,ok\n")
    with pytest.raises(AnnotationError, match=r"line 1: missing column\(s\) vid_key"):
        load_items("msrvtt", "test", str(d), "/v")
    (d / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,m,video1\n")
    with pytest.raises(AnnotationError, match=r"line 2: row has fewer fields than the header"):
        load_items("msrvtt", "test", str(d), "/v")
    (d / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\n")
    (d / "MSRVTT_data.json").write_text(
        '{"sentences": [\n{"video_id": "video0", "caption": "x"},\n{"video_id": }]}'
    )
    with pytest.raises(AnnotationError, match=r"MSRVTT_data\.json, line 3: invalid JSON"):
        load_items("msrvtt", "train", str(d), "/v")
    (d / "MSRVTT_data.json").write_text(
        '{"sentences": [{"video_id": "video0", "caption": "x"}, {"video_id": "v"}]}'
    )
    with pytest.raises(
        AnnotationError, match=r"MSRVTT_data\.json, record sentences\[1\]: missing field 'caption'"
    ):
        load_items("msrvtt", "train", str(d), "/v")
    (d / "MSRVTT_data.json").unlink()
    with pytest.raises(AnnotationError, match=r"MSRVTT_data\.json: annotation file not found"):
        load_items("msrvtt", "train", str(d), "/v")
    with pytest.raises(ValueError, match="MSR-VTT split must be one of"):
        load_items("msrvtt", "dev", str(d), "/v")


# ------------------------------------------------------------------------------------------------------------- MSVD
def test_msvd_items_join_tokens_and_find_files_by_stem(tmp_path):
    touch(tmp_path, "a/vid1.avi", "b/c/vid2.mp4", "vid2.txt", "vid5.avi", "zz/vid5.mp4")
    train = load_items("msvd", "train", str(FIX / "msvd"), str(tmp_path))
    assert train == [
        VideoItem(
            "msvd",
            "train",
            "vid1",
            str(tmp_path / "a/vid1.avi"),
            ("a man plays guitar", "someone plays music"),
        ),
        VideoItem("msvd", "train", "vid2", str(tmp_path / "b/c/vid2.mp4"), ("a dog runs",)),
        # no file: the fallback name (the job records it as missing)
        VideoItem(
            "msvd", "train", "vid3", f"{tmp_path}/vid3.mp4", ("a cat sleeps", "the cat is asleep", "cat")
        ),
    ]
    test = load_items("msvd", "test", str(FIX / "msvd"), str(tmp_path))
    # vid5 has two files: sorted walk order, first wins ("vid5.avi" < "zz/vid5.mp4")
    assert [(it.video_id, it.source, it.captions) for it in test] == [
        ("vid5", str(tmp_path / "vid5.avi"), ("people dance",)),
        ("vid6", f"{tmp_path}/vid6.mp4", ("a boy swims", "swimming")),
    ]
    assert [it.video_id for it in load_items("msvd", "val", str(FIX / "msvd"), str(tmp_path))] == ["vid4"]


class _Boom:
    """Unpickling this calls ``open(marker, "w")``, creating ``marker`` (a stand-in for any code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_msvd_malicious_pickle_is_refused(tmp_path):
    d = copy_fixture("msvd", tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"vid1": [["a"]], "x": _Boom(marker)})
    pickle.loads(payload).get("x").close()  # the stock unpickler runs it ...
    assert marker.exists()
    marker.unlink()
    (d / "raw-captions.pkl").write_bytes(payload)
    with pytest.raises(
        AnnotationError, match=r"raw-captions\.pkl: unsafe or invalid pickle: refused to load global"
    ):
        load_items("msvd", "train", str(d), "/v")
    assert not marker.exists()  # ... ours does not
    (d / "raw-captions.pkl").write_bytes(pickle.dumps({"vid1": [["a"]], "x": (os.system, "true")}))
    with pytest.raises(AnnotationError, match=r"refused to load global (posix|nt)\.system"):
        load_items("msvd", "train", str(d), "/v")
    # A class instance is refused too (needs find_class), even a harmless one.
    (d / "raw-captions.pkl").write_bytes(pickle.dumps({"vid1": [Path("a")]}))
    with pytest.raises(AnnotationError, match=r"refused to load global pathlib"):
        read_raw_captions(str(d / "raw-captions.pkl"))
    # The unpickler itself refuses any global.
    with pytest.raises(pickle.UnpicklingError, match="refused to load global builtins.eval"):
        RestrictedUnpickler.find_class(None, "builtins", "eval")  # type: ignore[arg-type]


def test_msvd_errors(tmp_path):
    d = copy_fixture("msvd", tmp_path)
    (d / "train_list.txt").write_text("vid1\n\nvid9\n")
    with pytest.raises(AnnotationError, match=r"train_list\.txt, line 3: video id 'vid9' has no captions"):
        load_items("msvd", "train", str(d), "/v")
    (d / "train_list.txt").write_text("vid1\nvid2\nvid1\n")
    with pytest.raises(AnnotationError, match=r"train_list\.txt, line 3: video id 'vid1' repeated"):
        load_items("msvd", "train", str(d), "/v")
    (d / "train_list.txt").write_text("vid1\n")
    (d / "raw-captions.pkl").write_bytes(pickle.dumps({"vid1": [["a", "b"], ["  "]]}))
    with pytest.raises(AnnotationError, match=r"raw-captions\.pkl, record 'vid1' caption 1: empty caption"):
        load_items("msvd", "train", str(d), "/v")
    (d / "raw-captions.pkl").write_bytes(pickle.dumps(["vid1"]))
    with pytest.raises(AnnotationError, match=r"expected a dict video_id -> captions, got list"):
        load_items("msvd", "train", str(d), "/v")
    (d / "raw-captions.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(AnnotationError, match=r"raw-captions\.pkl: .*pickle"):
        load_items("msvd", "train", str(d), "/v")


# ----------------------------------------------------------------------------------------------------------- DiDeMo
def test_didemo_paragraph_per_video(tmp_path):
    touch(tmp_path, "10015567@N08_3655084291.mov.mp4", "sub/10064334@N00_2406203096.mp4.avi")
    items = load_items("didemo", "train", str(FIX / "didemo"), str(tmp_path))
    assert items == [
        VideoItem(
            "didemo",
            "train",
            "10015567@N08_3655084291",
            str(tmp_path / "10015567@N08_3655084291.mov.mp4"),
            ("a man walks into view the man leaves dark room",),
            0.0,
            30.0,
        ),
        VideoItem(
            "didemo",
            "train",
            "10064334@N00_2406203096",
            str(tmp_path / "sub/10064334@N00_2406203096.mp4.avi"),
            ("first red car appears the car drives away",),
            0.0,
            30.0,
        ),
        VideoItem(
            "didemo", "train", "1234@N00_999", f"{tmp_path}/1234@N00_999.mp4", ("a dog barks",), 0.0, 30.0
        ),
    ]


def test_didemo_errors(tmp_path):
    d = copy_fixture("didemo", tmp_path)
    moments = json.loads((d / "train_data.json").read_text())
    moments[4]["description"] = " "
    (d / "train_data.json").write_text(json.dumps(moments))
    with pytest.raises(AnnotationError, match=r"train_data\.json, record \[4\]: empty caption"):
        load_items("didemo", "train", str(d), "/v")
    del moments[4]["video"]
    (d / "train_data.json").write_text(json.dumps(moments))
    with pytest.raises(AnnotationError, match=r"train_data\.json, record \[4\]: missing field 'video'"):
        load_items("didemo", "train", str(d), "/v")
    (d / "train_data.json").write_text(json.dumps(moments[:2]))
    with pytest.raises(
        AnnotationError, match=r"train_list\.txt, line 3: video id '1234@N00_999' has no description"
    ):
        load_items("didemo", "train", str(d), "/v")
    with pytest.raises(AnnotationError, match=r"test_list\.txt: annotation file not found"):
        load_items("didemo", "test", str(d), "/v")


# ------------------------------------------------------------------------------------------------------ ActivityNet
def test_activitynet_paragraph_window_and_file_stems(tmp_path):
    touch(tmp_path, "v_QOlSCBRmfWY.mp4", "x/v_ehGHCYKzyZ8.mkv")
    items = load_items("activitynet", "train", str(FIX / "activitynet"), str(tmp_path))
    assert items == [
        VideoItem(
            "activitynet",
            "train",
            "v_QOlSCBRmfWY",
            str(tmp_path / "v_QOlSCBRmfWY.mp4"),
            (
                "A young woman is seen standing in a room and leads into her dancing. The girl dances around the "
                "room while the camera captures her movements. She continues dancing around the room and ends by "
                "laying on the floor.",
            ),
            0.0,
            82.73,
        ),
        VideoItem(
            "activitynet",
            "train",
            "v_ehGHCYKzyZ8",
            str(tmp_path / "x/v_ehGHCYKzyZ8.mkv"),
            ("A man is standing in a gym. He lifts a heavy barbell.",),
            0.0,
            61.72,
        ),
        VideoItem(
            "activitynet",
            "train",
            "v_nwznKOuZM7w",
            f"{tmp_path}/v_nwznKOuZM7w.mp4",
            ("Two people play table tennis.",),
            0.0,
            51.65,
        ),
    ]


def test_activitynet_val_is_val_1_in_ids_order(tmp_path):
    touch(tmp_path, "v_uqiMw7tQ1Cc.mp4")
    items = load_activitynet("val", str(FIX / "activitynet"), str(tmp_path))
    assert [(it.video_id, it.end, it.captions[0][:20]) for it in items] == [
        ("v_bXdq2zI1Ms0", 73.1, "Three men are standi"),
        ("v_uqiMw7tQ1Cc", 55.15, "A weight lifting tut"),
    ]
    assert items[1].source == str(tmp_path / "v_uqiMw7tQ1Cc.mp4")
    assert items[1].captions == (
        "A weight lifting tutorial is given. The coach helps the guy in red with the proper body placement and "
        "lifting technique.",
    )
    with pytest.raises(ValueError, match=r"ActivityNet split must be one of \('train', 'val'\)"):
        load_items("activitynet", "test", str(FIX / "activitynet"), str(tmp_path))


def test_activitynet_errors(tmp_path):
    d = copy_fixture("activitynet", tmp_path)
    ann = json.loads((d / "train.json").read_text())
    ann["v_ehGHCYKzyZ8"]["duration"] = "long"
    (d / "train.json").write_text(json.dumps(ann))
    with pytest.raises(
        AnnotationError, match=r"train\.json, record 'v_ehGHCYKzyZ8': duration must be a number"
    ):
        load_items("activitynet", "train", str(d), "/v")
    ann["v_ehGHCYKzyZ8"]["duration"] = 0
    (d / "train.json").write_text(json.dumps(ann))
    with pytest.raises(AnnotationError, match=r"record 'v_ehGHCYKzyZ8': duration must be > 0, got 0"):
        load_items("activitynet", "train", str(d), "/v")
    ann["v_ehGHCYKzyZ8"] = {"duration": 5, "sentences": [" ", ""]}
    (d / "train.json").write_text(json.dumps(ann))
    with pytest.raises(AnnotationError, match=r"record 'v_ehGHCYKzyZ8': empty caption"):
        load_items("activitynet", "train", str(d), "/v")
    shutil.copy(FIX / "activitynet" / "train.json", d / "train.json")
    (d / "train_ids.json").write_text('["v_QOlSCBRmfWY", "v_missing"]')
    with pytest.raises(
        AnnotationError, match=r"train_ids\.json, record \[1\]: video id 'v_missing' has no entry"
    ):
        load_items("activitynet", "train", str(d), "/v")


# ------------------------------------------------------------------------------------------------------- CSV, JSONL
def test_csv_groups_rows_by_path_and_window_and_filters_split():
    path = str(FIX / "generic" / "annotations.csv")
    train = load_items("csv", "train", path, "/data")
    assert train == [
        VideoItem("csv", "train", "a", "/data/clips/a.mp4", ("a dog runs", "a brown dog running")),
        VideoItem("csv", "train", "b", "/data/clips/b.mkv", ("a cat jumps", "the cat jumps up"), 1.5, 4.0),
        VideoItem("csv", "train", "b", "/data/clips/b.mkv", ("a cat lands",), 4.0, 8.25),
        VideoItem("csv", "train", "cook01", "/data/clips/d.mp4", ("someone cooks",), 0.0, 10.0),
    ]
    assert load_items("csv", "test", path, "/data") == [
        VideoItem("csv", "test", "c", "/abs/c.mp4", ("a man, a plan",))
    ]
    assert load_items("csv", "val", path, "/data") == []


def test_jsonl_without_split_key_keeps_every_row():
    path = str(FIX / "generic" / "annotations.jsonl")
    assert load_items("jsonl", "val", path, "s3://bkt/root") == [
        VideoItem("jsonl", "val", "a", "s3://bkt/root/clips/a.mp4", ("a dog runs", "a brown dog running")),
        VideoItem("jsonl", "val", "b", "s3://bkt/root/clips/b.mkv", ("a cat jumps",), 1.5, 4.0),
        VideoItem("jsonl", "val", "remote_e", "s3://bucket/v/e.mp4", ("a remote video",)),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("video_path,caption\na.mp4,ok\nb.mp4, \n", r"x\.csv, line 3: empty caption"),
        ("video_path,text\na.mp4,ok\n", r"x\.csv, line 1: missing column\(s\) caption"),
        (
            "video_path,caption,start,end\na.mp4,ok,1,2\na.mp4,ok,soon,2\n",
            r"line 3: start must be a number of seconds, got 'soon'",
        ),
        ("video_path,caption,start,end\na.mp4,ok,5,5\n", r"x\.csv, line 2: end 5 <= start 5"),
        ("video_path,caption,start,end\na.mp4,ok,-1,\n", r"line 2: start must be >= 0"),
        ("video_path,caption\n,ok\n", r"line 2: video_path must be a non-empty string"),
        (
            "video_path,caption,video_id\na.mp4,x,v1\na.mp4,y,v2\n",
            r"line 3: video_id 'v2' conflicts with 'v1'",
        ),
        (
            "video_path,caption,split\na.mp4,x,train\nb.mp4,,test\n",
            r"line 3: empty caption",
        ),  # other split too
    ],
)
def test_csv_errors(tmp_path, text, message):
    p = tmp_path / "x.csv"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        load_items("csv", "train", str(p), "/v")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"video_path": "a.mp4", "caption": "x"}\n\n{"video_path": "b.mp4", "caption": \n',
            r"x\.jsonl, line 3: invalid JSON",
        ),
        ('{"video_path": "a.mp4"}\n', r"x\.jsonl, line 1: missing key\(s\) caption"),
        ('["a.mp4", "x"]\n', r"line 1: expected a JSON object, got list"),
        ('{"video_path": "a.mp4", "caption": 3}\n', r"line 1: caption must be a string, got int"),
        ('{"video_path": "a.mp4", "caption": "x", "start": 2, "end": 1.5}\n', r"line 1: end 1.5 <= start 2"),
        (
            '{"video_path": "a.mp4", "caption": "x", "end": true}\n',
            r"line 1: end must be a number of seconds",
        ),
    ],
)
def test_jsonl_errors(tmp_path, text, message):
    p = tmp_path / "x.jsonl"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        load_items("jsonl", "train", str(p), "/v")


def test_annotation_error_attributes():
    e = AnnotationError("/a/b.csv", "empty caption", line=7)
    assert (e.path, e.line, e.record, e.problem) == ("/a/b.csv", 7, None, "empty caption")
    assert str(e) == "/a/b.csv, line 7: empty caption"
    assert isinstance(e, ValueError)
    assert str(AnnotationError("f.json", "bad", record="[2]")) == "f.json, record [2]: bad"


def test_annotations_and_video_tree_on_s3(s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = s3_bucket[len("s3://") :]
    for name in ("raw-captions.pkl", "train_list.txt"):
        fs.pipe_file(f"{bucket}/anno/{name}", (FIX / "msvd" / name).read_bytes())
    fs.pipe_file(f"{bucket}/videos/x/vid2.avi", b"")
    fs.pipe_file(f"{bucket}/videos/vid1.mp4", b"")
    items = load_items("msvd", "train", f"{s3_bucket}/anno", f"{s3_bucket}/videos")
    assert [(it.video_id, it.source) for it in items] == [
        ("vid1", f"{s3_bucket}/videos/vid1.mp4"),
        ("vid2", f"{s3_bucket}/videos/x/vid2.avi"),
        ("vid3", f"{s3_bucket}/videos/vid3.mp4"),
    ]


# -------------------------------------------------- real DiDeMo files: standard lists, extension-less, distinct ids
def _external(*parts: str) -> str:
    root = os.environ.get("NEIGHBORRETR_EXTERNAL_DATA")
    if not root:
        pytest.skip("NEIGHBORRETR_EXTERNAL_DATA is not set (needs didemo/{val,test}_data.json and standard lists)")
    path = os.path.join(root, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    return path


@pytest.mark.parametrize("split,count,json_count", [("val", 1065, 1094), ("test", 1004, 1037)])
def test_didemo_standard_lists_on_the_real_files(tmp_path, split, count, json_count):
    src = _external("didemo", f"{split}_data.json")
    anno = tmp_path / "anno"
    anno.mkdir()
    shutil.copy(src, anno / f"{split}_data.json")
    shutil.copy(_external("didemo", f"{split}_list.txt"), anno / f"{split}_list.txt")
    with open(src, encoding="utf-8") as f:
        assert len({m["video"] for m in json.load(f)}) == json_count  # the non-standard, json-derived set
    entries = [ln.strip() for ln in open(anno / f"{split}_list.txt", encoding="utf-8") if ln.strip()]
    videos = tmp_path / "videos"
    videos.mkdir()
    bare = entries[0].rsplit(".", 1)[0]
    (videos / bare).write_bytes(b"x")  # DiDeMo's download script: the id, no extension
    (videos / entries[1]).write_bytes(b"x")  # the name exactly as listed
    items = load_items("didemo", split, str(anno), str(videos))
    assert len(items) == count == len(set(entries))
    assert len({it.video_id for it in items}) == count
    assert all("." not in it.video_id for it in items)  # ids without the extension
    assert items[0].video_id == bare and items[0].source == str(videos / bare)
    assert items[1].source == str(videos / entries[1])


def test_didemo_entries_sharing_a_bare_id_keep_distinct_ids(tmp_path):
    anno = tmp_path / "anno"
    anno.mkdir()
    moments = [{"video": v, "description": d, "times": [[0, 1]]} for v, d in (("a@N0_1.mp4", "x"), ("a@N0_1.avi", "y"))]
    (anno / "test_data.json").write_text(json.dumps(moments))
    (anno / "test_list.txt").write_text("a@N0_1.mp4\na@N0_1.avi\n")
    items = load_items("didemo", "test", str(anno), str(tmp_path / "none"))
    assert [it.video_id for it in items] == ["a@N0_1.mp4", "a@N0_1.avi"]


def test_jsonl_files_with_the_same_stem_get_distinct_ids(tmp_path):
    rows = [{"video_path": "clip.mp4", "caption": "a"}, {"video_path": "clip.mkv", "caption": "b"},
            {"video_path": "other.mp4", "caption": "c"}]
    anno = tmp_path / "a.jsonl"
    anno.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items("jsonl", "train", str(anno), str(tmp_path))
    assert [it.video_id for it in items] == ["clip.mp4", "clip.mkv", "other"]
