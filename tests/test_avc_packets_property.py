"""Property test of the packet-skip fast path (``preprocess/avc_packets.py``, config ``packet_skip``).

Hypothesis draws GOP structures (B-frames 0-3 with and without a B-pyramid, open and closed GOPs, long and short
GOPs, 1-4 reference frames, SPS/PPS repeated in-band before every keyframe) and a set of wanted frames; the
frames decoded from the planned packets must be bit-identical to decoding the whole file, on both backends, and
must be the wanted frames (read back from the index pattern each frame carries).
"""

from __future__ import annotations

import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from video_fixtures import make_index_video, read_index

from preprocess.avc_packets import plan_packets
from preprocess.decode import decode_frames, probe


@st.composite
def gop_structures(draw):
    n = draw(st.integers(8, 48))
    keyint = draw(st.integers(2, 50))
    params = {
        "bframes": draw(st.integers(0, 3)),
        "b-pyramid": draw(st.sampled_from(["none", "normal"])),
        "b-adapt": 0,
        "open-gop": int(draw(st.booleans())),
        "keyint": keyint,
        "min-keyint": draw(st.integers(1, keyint)),
        "scenecut": 0,
        "ref": draw(st.integers(1, 4)),
        "repeat-headers": int(draw(st.booleans())),
    }
    wanted = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))
    return n, params, wanted


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(gop_structures())
def test_planned_packets_decode_exactly_like_the_whole_file(case):
    n, params, wanted = case
    x264 = ":".join(f"{k}={v}" for k, v in params.items())
    with tempfile.TemporaryDirectory() as tmp:
        path = make_index_video(f"{tmp}/v.mp4", n, 24, extra=["-x264-params", x264])
        for backend in ("ffmpeg", "decord"):
            info = probe(path, backend=backend)
            assert info.num_frames == n
            fast = decode_frames(path, wanted, size=64, backend=backend, info=info, reference_only=True)
            whole = decode_frames(path, wanted, size=64, backend=backend, info=info, reference_only=False)
            assert np.array_equal(fast, whole), (backend, x264, wanted)
            assert [read_index(f) for f in fast] == wanted, (backend, x264)
        plan = plan_packets(path, sorted(set(wanted)), n)
        if (
            plan is not None
        ):  # when a plan is made it never keeps more than the file and keeps every wanted one
            assert len(set(wanted)) <= plan.kept <= plan.total == n
