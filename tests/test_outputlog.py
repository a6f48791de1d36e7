"""Unit tests of flux_delegate.outputlog: the remote job's output eventlog as
the local job's own, within a cap."""

import base64
import json

from flux_delegate.outputlog import (
    MERGED_DATA,
    OutputCopy,
    capped_notice,
    normalized,
    size_text,
)

HEADER = {
    "version": 1,
    "encoding": {"stdout": "UTF-8", "stderr": "UTF-8"},
    "count": {"stdout": 1, "stderr": 1},
    "options": {},
}


def data(stream, text, rank="0"):
    return {"stream": stream, "rank": rank, "data": text}


def entries(text):
    return [json.loads(line) for line in text.splitlines()]


def printed(text):
    """What 'flux job attach' prints of an output eventlog: (stdout, stderr)."""
    out = {"stdout": "", "stderr": ""}
    for entry in entries(text):
        context = entry.get("context", {})
        if entry["name"] == "data" and "data" in context:
            chunk = context["data"]
            if context.get("encoding") == "base64":
                chunk = base64.b64decode(chunk).decode()
            out[context["stream"]] += chunk
        elif entry["name"] == "log":
            out["stderr"] += context["message"] + "\n"
    return out["stdout"], out["stderr"]


def test_a_copy_within_the_limit_is_the_output_as_it_was():
    copy = OutputCopy(1 << 20)
    copy.add("header", 1.0, HEADER)
    for i, (stream, text) in enumerate(
        [("stdout", "o1\n"), ("stderr", "e1\n"), ("stdout", "o2\n"), ("stdout", "o3\n"), ("stderr", "e2\n")]
    ):
        assert copy.add("data", 2.0 + i, data(stream, text))
    copy.add("data", 9.0, {"stream": "stdout", "rank": "0", "eof": True})
    text = copy.text()
    assert printed(text) == ("o1\no2\no3\n", "e1\ne2\n")
    names = [e["name"] for e in entries(text)]
    assert names[0] == "header" and entries(text)[0]["context"] == HEADER
    # Consecutive lines of one stream are one entry; the streams' order
    # between them is kept.
    streams = [e["context"]["stream"] for e in entries(text)[1:]]
    assert streams == ["stdout", "stderr", "stdout", "stderr", "stdout"]
    assert not copy.capped


def test_the_limit_goes_to_the_output_not_to_the_framing():
    copy = OutputCopy(16 * 1024)
    copy.add("header", 1.0, HEADER)
    n = 0
    while copy.add("data", 2.0, data("stdout", f"{n + 1}\n")):
        n += 1
    assert copy.capped and not copy.add("data", 3.0, data("stderr", "late\n"))
    text = copy.text(capped_notice(16 * 1024, "ƒABC"))
    out, err = printed(text)
    assert out == "".join(f"{i}\n" for i in range(1, n + 1))
    # Nearly all of it is output (a newline takes two bytes in JSON).
    assert 13 * 1024 < len(out) <= 16 * 1024
    assert "late" not in err and "flux remote attach ƒABC" in err and "16K" in err
    assert len(text) < 16 * 1024 + 1024


def test_joined_data_is_bounded():
    copy = OutputCopy(1 << 20)
    copy.add("header", 1.0, HEADER)
    line = "x" * 1000 + "\n"
    for _ in range(200):
        copy.add("data", 2.0, data("stdout", line))
    pieces = [e for e in entries(copy.text()) if e["name"] == "data"]
    assert len(pieces) > 1
    assert all(len(e["context"]["data"]) <= MERGED_DATA for e in pieces)
    assert "".join(e["context"]["data"] for e in pieces) == line * 200


def test_different_ranks_are_not_joined():
    copy = OutputCopy(1 << 20)
    copy.add("header", 1.0, HEADER)
    copy.add("data", 2.0, data("stdout", "a\n", rank="0"))
    copy.add("data", 2.0, data("stdout", "b\n", rank="1"))
    assert [e["context"]["rank"] for e in entries(copy.text())[1:]] == ["0", "1"]


def test_nothing_to_write_without_output_or_notice():
    assert OutputCopy(100).text() is None
    text = OutputCopy(0).text("not copied")
    assert [e["name"] for e in entries(text)] == ["header", "log"]
    assert entries(text)[1]["context"]["level"] == 4  # as the shell warns


def test_what_attach_cannot_read_is_left_out():
    copy = OutputCopy(1 << 20)
    copy.add("header", 1.0, HEADER)
    for name, context in [
        ("data", {"stream": "stdin", "rank": "0", "data": "x"}),
        ("data", {"stream": "stdout", "rank": 0, "data": "x"}),
        ("data", {"stream": "stdout", "rank": "0"}),
        ("data", {"stream": "stdout", "rank": "0", "data": "!!", "encoding": "base64"}),
        ("data", {"stream": "stdout", "rank": "0", "eof": "yes"}),
        ("log", {"level": 99, "message": "out of attach's table"}),
        ("log", {"level": True, "message": "a bool"}),
        ("log", {"level": 3}),
        ("redirect", {"stream": "stdout", "rank": "0", "path": 3}),
        ("exec", {}),
        ("data", ["not", "a", "table"]),
        ("header", "no"),
    ]:
        assert copy.add(name, 2.0, context)
    assert copy.malformed == 12
    assert [e["name"] for e in entries(copy.text())] == ["header"]


def test_odd_text_is_made_what_flux_reads():
    copy = OutputCopy(1 << 20)
    copy.add("header", float("nan"), HEADER)
    copy.add("data", 2.0, data("stdout", "nul\0inside\n"))
    copy.add("data", 3.0, data("stderr", "lone \ud800 surrogate\n"))
    copy.add("log", 4.0, {"level": 4, "message": "nul\0here"})
    copy.add("data", 5.0, {"stream": "stdout", "rank": "0", "data": "x", "extra": float("inf")})
    text = copy.text()
    text.encode("utf-8")  # no lone surrogate left
    assert "NaN" not in text and "Infinity" not in text
    assert "\\u0000" not in text
    stamps = [e["timestamp"] for e in entries(text)]
    assert stamps[0] == 0.0
    out, err = printed(text)
    assert out == "nul\0inside\n"  # base64, as the shell sends it
    assert "lone \ufffd surrogate\n" in err and "nul\\0here" in err
    assert copy.malformed == 1


def test_normalized_keeps_what_is_right():
    good = {"stream": "stdout", "rank": "[0-3]", "data": "aGk=", "encoding": "base64"}
    assert normalized("data", good) == good
    assert normalized("redirect", {"stream": "stderr", "rank": "0", "path": "/f"})
    assert normalized("log", {"level": 0, "message": "m", "component": "c", "rank": 1})


def test_size_text():
    assert [size_text(n) for n in (4 << 20, 512 << 10, 1 << 30, 1000, 0)] == [
        "4M", "512K", "1G", "1000", "0",
    ]


def test_an_entry_named_by_anything_but_a_string_is_left_out():
    copy = OutputCopy(1 << 20)
    for name in (["data"], {"a": 1}, 3, None):
        assert copy.add(name, 1.0, data("stdout", "x\n"))
    assert copy.malformed == 4 and copy.text() is None


def test_live_copy_gives_the_beginning_then_keeps_only_the_tail():
    from flux_delegate.outputlog import LiveCopy

    copy = LiveCopy(limit=400, tail=200, local_id="fX")
    given = []
    for i in range(100):
        given += copy.take("data", 1.0, {"stream": "stdout", "rank": "0", "data": f"{i}\n"})
    assert json.loads(given[0])["name"] == "header"  # one of ours: none came
    data = [json.loads(t) for t in given[1:] if json.loads(t)["name"] == "data"]
    first = [int(e["context"]["data"]) for e in data]
    assert first == list(range(len(first))) and 3 < len(first) < 100
    assert json.loads(given[-1])["name"] == "log" and "output-tail" in given[-1]
    end = copy.end()
    assert "bytes of output left out" in end[0] and "flux remote attach fX" in end[0]
    last = [int(json.loads(t)["context"]["data"]) for t in end[1:]]
    assert last == list(range(100 - len(last), 100)) and 0 < len(last) < 100 - len(first)
    assert sum(len(t) + 1 for t in end[1:]) <= 200
    # Malformed entries are left out and counted; a second header too.
    assert copy.take("data", 1.0, {"stream": "nope"}) == [] and copy.malformed == 1
    assert copy.take("header", 1.0, {"version": 1}) == []


def test_live_copy_within_the_limit_has_no_end():
    from flux_delegate.outputlog import LiveCopy

    copy = LiveCopy(limit=4096, tail=1024, local_id="fX")
    lines = copy.take("header", 2.0, {"version": 1}) + copy.take(
        "data", 2.0, {"stream": "stderr", "rank": "0", "data": "x\n"}
    )
    assert [json.loads(t)["name"] for t in lines] == ["header", "data"]
    assert copy.end() == []


def test_tailed_copy_keeps_the_beginning_and_the_tail_of_a_whole_read():
    """A whole output read again for live output (TailedCopy, OutputCopy's
    interface): never full, its text the live copy's: the beginning, the
    capped notice, what was left out said, the tail."""
    from flux_delegate.outputlog import TailedCopy

    copy = TailedCopy(limit=400, tail=200, local_id="fX")
    assert copy.text() is None
    assert copy.add("header", 1.0, {"version": 1, "count": {"stdout": 1}})
    assert all(
        copy.add("data", 1.0, {"stream": "stdout", "rank": "0", "data": f"{i}\n"}) for i in range(100)
    )
    copy.malformed += 1
    assert copy.live.malformed == 1
    entries = [json.loads(t) for t in copy.text().splitlines()]
    assert entries[0]["name"] == "header" and entries[0]["context"]["count"] == {"stdout": 1}
    data = [int(e["context"]["data"]) for e in entries if e["name"] == "data"]
    notices = [e["context"]["message"] for e in entries if e["name"] == "log"]
    assert len(notices) == 2 and "output-tail" in notices[0] and "left out" in notices[1]
    cut = next(i for i, v in enumerate(data) if v != i)
    assert 3 < cut < 100 and data[cut:] == list(range(data[cut], 100))
    only_notice = TailedCopy(limit=400, tail=200, local_id="fX").text("did not come")
    assert [json.loads(t)["name"] for t in only_notice.splitlines()] == ["header", "log"]
