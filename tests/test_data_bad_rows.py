"""Issue 17 (hardening): no data row can crash a run or lose work.

Real files in the published formats, each with good rows among bad ones (invalid UTF-8, an over-size row,
a 100k-deep nested list, `{[]: 1}` conversations, a truncated final line, image paths leaving the image
root). Every reader keeps exactly the good rows and reports each bad one with its row and reason: the
`data prepare` parsers (directly and through the CLI) and the SFT reader, which share one conversation
parser and one image-path rule.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mini_o3_jax.cli import main
from mini_o3_jax.data import loader
from mini_o3_jax.data.benchmarks import read_conversations, read_source
from mini_o3_jax.data.conversations import parse_conversations
from mini_o3_jax.data.direct import read_sharegpt
from mini_o3_jax.data.images import resolve_image
from mini_o3_jax.data.records import ConversationRecord, Record, RecordError
from mini_o3_jax.data.rows import MAX_NESTING, MAX_ROW_BYTES
from mini_o3_jax.errors import ChatFormatError
from mini_o3_jax.sft.data import conversation_trajectory, sharegpt_trajectories

DEEP = "[" * 100_000 + "]" * 100_000
OVERSIZE = "x" * (MAX_ROW_BYTES + 1)
ABSOLUTE_HINT = "is absolute and outside the image root(s)"


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def outside_image(tmp_path: Path) -> tuple[Path, bytes]:
    """An image that exists but lies outside every image root the fixtures use."""
    data = png(99)
    return put(tmp_path / "outside" / "secret.png", data), data


def turns(n_obs: int, answer: str) -> list[dict[str, str]]:
    out = [{"from": "system", "value": "You are a helpful assistant."},
           {"from": "human", "value": "<image>\nWhat color is the coat?"}]
    for k in range(n_obs):
        out += [{"from": "gpt", "value": '<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "original_image"}'
                                         "</grounding>"},
                {"from": "human", "value": f"Observation {k + 1}:\n<image>."}]
    return [*out, {"from": "gpt", "value": f"<answer>{answer}</answer>"}]


# --------------------------------------------------------------------------------------------------
# Mini-o3 JSONL (synthetic / VisualProbe layout): one bad line costs one row
# --------------------------------------------------------------------------------------------------


def jsonl_row(doc_id: str, image: str = "images/a.png", problem: str = "How many dots?") -> bytes:
    return json.dumps({"images": [image], "doc_id": doc_id, "problem": f"<image>\n{problem}", "solution": "7",
                       "data_source": "synthetic_easy"}).encode()


def minio3_jsonl(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """data/synthetic_easy/val.jsonl: good rows 0, 2, 5; bad rows 1 (not UTF-8), 3 (over-size), 4 (100k deep),
    6 (`../` path), 7 (absolute path outside the roots), 8 (truncated final line, no newline)."""
    folder = tmp_path / "data" / "synthetic_easy"
    img = png(1)
    put(folder / "images" / "a.png", img)
    secret, secret_bytes = outside_image(tmp_path)
    lines = [jsonl_row("s0"), jsonl_row("s1", problem="Cafe?").replace(b"Cafe", b"Caf\xe9\xff"), jsonl_row("s2"),
             jsonl_row("s3", problem=OVERSIZE), DEEP.encode(), jsonl_row("s5", problem="Which shape?"),
             jsonl_row("s6", image="../../outside/secret.png"), jsonl_row("s7", image=str(secret))]
    truncated = jsonl_row("s8")[:40]
    put(folder / "val.jsonl", b"\n".join(lines) + b"\n" + truncated)
    assert b"\xff" in lines[1] and len(lines[3]) > MAX_ROW_BYTES and not truncated.endswith(b"\n")
    return folder, img, secret_bytes


def expected_jsonl_records(img: bytes) -> list[Record]:
    return [Record(benchmark="synthetic_easy", doc_id=doc, image=img, problem=f"<image>\n{q}", solution="7",
                   data_source="synthetic_easy", options=(), category="easy")
            for doc, q in (("s0", "How many dots?"), ("s2", "How many dots?"), ("s5", "Which shape?"))]


def check_jsonl_bad_rows(bad, folder: Path, absolute_allowed: bool = False) -> None:
    rows = {b.row: b.reason for b in bad}
    assert sorted(rows) == ([1, 3, 4, 6, 8] if absolute_allowed else [1, 3, 4, 6, 7, 8])
    assert all(b.source == str(folder / "val.jsonl") for b in bad)
    assert rows[1] == "line 2 is not UTF-8 text: 'utf-8' codec can't decode byte 0xe9 in position 69: invalid continuation byte"
    size = len(jsonl_row("s3", problem=OVERSIZE)) + 1  # the line with its newline, counted without holding it
    assert rows[3] == f"line 4 is {size} bytes long, over the limit of {MAX_ROW_BYTES} for one row"
    assert rows[4] == "line 5 is nested too deeply to parse (RecursionError)"
    assert rows[6].startswith("image path '../../outside/secret.png' leaves the image root")
    if not absolute_allowed:
        assert rows[7].startswith(f"image path '{folder.parent.parent / 'outside' / 'secret.png'}' {ABSOLUTE_HINT}")
    assert rows[8].startswith("line 9 is not JSON: Unterminated string") and rows[8].endswith(
        "(the file ends inside this line: truncated?)")


def test_jsonl_bad_lines_are_reported_and_the_rest_kept(tmp_path):
    folder, img, secret = minio3_jsonl(tmp_path)
    records, bad = read_source("synthetic_easy", folder)
    assert records == expected_jsonl_records(img)
    check_jsonl_bad_rows(bad, folder)
    # the option reads the absolute path as is; a path climbing out of the root stays refused
    records, bad = read_source("synthetic_easy", folder, allow_absolute_images=True)
    assert [r.doc_id for r in records] == ["s0", "s2", "s5", "s7"] and records[3].image == secret
    check_jsonl_bad_rows(bad, folder, absolute_allowed=True)


def test_data_prepare_cli_keeps_good_rows_and_lists_bad_ones(tmp_path, capsys):
    folder, img, secret = minio3_jsonl(tmp_path)
    argv = ["data", "prepare", "--benchmark", "synthetic_easy", "--source", str(folder),
            "--data-dir", str(tmp_path / "tfds")]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic_easy: prepared 3 record(s)" in out and "6 unusable row(s)" in out
    assert f"val.jsonl: row 7 (doc_id s7): image path '{tmp_path / 'outside' / 'secret.png'}' {ABSOLUTE_HINT}" in out
    assert list(loader.load("synthetic_easy", tmp_path / "tfds")) == expected_jsonl_records(img)
    check_jsonl_bad_rows(loader.bad_records("synthetic_easy", tmp_path / "tfds"), folder)

    assert main([*argv, "--overwrite", "--allow-absolute-image-paths"]) == 0
    assert "synthetic_easy: prepared 4 record(s)" in capsys.readouterr().out
    prepared = list(loader.load("synthetic_easy", tmp_path / "tfds"))
    assert prepared[:3] == expected_jsonl_records(img) and prepared[3].image == secret
    check_jsonl_bad_rows(loader.bad_records("synthetic_easy", tmp_path / "tfds"), folder, absolute_allowed=True)


def test_tsv_row_with_invalid_utf8_is_one_bad_row(tmp_path):
    """HR-Bench as a VLMEvalKit TSV: bytes that are not UTF-8 in one row cost that row only."""
    img = png(3)
    header = "index\tquestion\tA\tB\tanswer\timage\tcategory\n"
    rows = [f"{k}\tWhat color{'?' if k != 1 else ' @@?'}\tred\tblue\tB\t{base64.b64encode(img).decode()}\tsingle\n"
            for k in range(3)]
    put(tmp_path / "hr_bench_4k.tsv", (header + "".join(rows)).encode().replace(b"@@", b"caf\xe9"))
    records, bad = read_source("hrbench_4k", tmp_path)
    assert [(r.doc_id, r.solution, r.image) for r in records] == [("0", "B", img), ("2", "B", img)]
    assert [(b.row, b.doc_id, b.reason) for b in bad] == [
        (1, "", "row 2 is not UTF-8 text (byte 0xe9 at character 16)")]


# --------------------------------------------------------------------------------------------------
# Cold-start JSON: the same rows kept and refused, for the same reasons, by `data prepare` and SFT
# --------------------------------------------------------------------------------------------------


def coldstart_json(tmp_path: Path) -> tuple[Path, list[bytes], bytes]:
    """data/coldstart/Mini-o3-Coldstart.json, a JSON list: good rows 0 (Python-repr string), 1 (JSON string),
    2 (a list); bad rows 3-10; the file ends inside row 11."""
    folder = tmp_path / "data" / "coldstart"
    imgs = [png(10), png(11), png(12)]
    for k, data in enumerate(imgs):
        put(folder / "images" / f"{k}.png", data)
    secret, secret_bytes = outside_image(tmp_path)
    rows = [
        {"conversations": repr(turns(1, "Red")), "images": ["images/0.png", "images/1.png"]},
        {"conversations": json.dumps(turns(0, "Blue")), "images": ["images/2.png"]},
        {"conversations": turns(0, "Green"), "images": ["images/0.png"]},
        {"conversations": "{[]: 1}", "images": []},
        {"conversations": DEEP, "images": []},
        {"conversations": repr(turns(0, OVERSIZE)), "images": ["images/0.png"]},
        {"conversations": repr(turns(0, "@@")), "images": ["images/1.png"]},  # its bytes become invalid UTF-8
        {"conversations": repr(turns(0, "x")), "images": ["../../outside/secret.png"]},
        {"conversations": repr(turns(0, "y")), "images": [str(secret)]},
        {"conversations": repr(turns(0, "z")[::-1]), "images": ["images/0.png"]},
        {"conversations": repr(turns(1, "w")), "images": ["images/0.png"]},  # two placeholders, one image
    ]
    text = "[\n" + ",\n".join(json.dumps(r) for r in rows) + ',\n{"conversations": "[{\'from\': \'hum'
    data = text.encode().replace(b"<answer>@@</answer>", b"<answer>\xff\xfe</answer>")
    put(folder / "Mini-o3-Coldstart.json", data)
    return folder / "Mini-o3-Coldstart.json", imgs, secret_bytes


def check_coldstart_bad_rows(pairs: list[tuple[int, str]], absolute_allowed: bool = False) -> None:
    rows = dict(pairs)
    assert sorted(rows) == ([3, 4, 5, 6, 7, 9, 10, 11] if absolute_allowed else [3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert rows[3] == ("field 'conversations' is a string that is neither JSON nor a Python list literal: "
                       "TypeError: unhashable type: 'list'")
    assert rows[4] == "field 'conversations' is nested too deeply to parse (RecursionError)"
    size = len(json.dumps({"conversations": repr(turns(0, OVERSIZE)), "images": ["images/0.png"]}))
    assert rows[5] == f"list item 5 (line 7) is {size} characters long, over the limit of {MAX_ROW_BYTES} for one row"
    assert rows[6].startswith("list item 6 (line 8) is not UTF-8 text (byte 0xff at character ")
    assert rows[7].startswith("image path '../../outside/secret.png' leaves the image root")
    if not absolute_allowed:
        assert ABSOLUTE_HINT in rows[8] and "secret.png" in rows[8]
    assert rows[9].startswith("conversations roles are ['assistant', 'user', 'system']; expected human/gpt turns")
    assert rows[10] == ("2 <image> placeholder(s) in the human turns but 1 image(s); expected one image per "
                        "placeholder")
    assert rows[11] == "list item 11 (line 13): the file ends inside it (truncated?)"


def test_coldstart_prepare_parser_and_sft_reader_agree_row_by_row(tmp_path):
    path, imgs, secret = coldstart_json(tmp_path)
    records, bad = read_conversations(path.parent)
    assert records == [ConversationRecord("0", turns(1, "Red"), (imgs[0], imgs[1]), "mini_o3_coldstart"),
                       ConversationRecord("1", turns(0, "Blue"), (imgs[2],), "mini_o3_coldstart"),
                       ConversationRecord("2", turns(0, "Green"), (imgs[0],), "mini_o3_coldstart")]
    check_coldstart_bad_rows([(b.row, b.reason) for b in bad])

    sft_bad: list = []
    rows = read_sharegpt(path, bad=sft_bad)
    image = str(path.parent / "images")
    assert rows == [  # the same rows, named by file and row, images kept as their checked paths
        ConversationRecord(f"{path}[0]", turns(1, "Red"), (f"{image}/0.png", f"{image}/1.png"), "mini_o3_coldstart"),
        ConversationRecord(f"{path}[1]", turns(0, "Blue"), (f"{image}/2.png",), "mini_o3_coldstart"),
        ConversationRecord(f"{path}[2]", turns(0, "Green"), (f"{image}/0.png",), "mini_o3_coldstart")]
    assert [(b.row, b.reason) for b in sft_bad] == [(b.row, b.reason) for b in bad]
    assert all(b.source == str(path) for b in sft_bad + bad)

    records, bad = read_conversations(path.parent, allow_absolute_images=True)
    assert [r.doc_id for r in records] == ["0", "1", "2", "8"] and records[3].images == (secret,)
    check_coldstart_bad_rows([(b.row, b.reason) for b in bad], absolute_allowed=True)
    sft_bad = []
    rows = read_sharegpt(path, allow_absolute_images=True, bad=sft_bad)
    assert [r.doc_id for r in rows][3] == f"{path}[8]" and rows[3].images == (str(tmp_path / "outside/secret.png"),)
    assert [(b.row, b.reason) for b in sft_bad] == [(b.row, b.reason) for b in bad]


def test_sft_trains_on_the_kept_rows_and_refuses_a_file_with_none(tmp_path):
    from mini_o3_jax.processing.image import ImageProcessor
    from tests.helpers import small_tokenizer

    path, _, _ = coldstart_json(tmp_path)
    tok, proc = small_tokenizer(), ImageProcessor(min_pixels=3136, max_pixels=60_000)
    trajs = list(sharegpt_trajectories(read_sharegpt(path, bad=[]), tok, proc, min_pixels=3136, max_pixels=60_000))
    assert [len(t.images) for t in trajs] == [2, 1, 1] and [t.answer for t in trajs] == ["Red", "Blue", "Green"]
    only_bad = put(tmp_path / "bad.json", json.dumps([{"conversations": "{[]: 1}"}, {"images": []}]).encode())
    with pytest.raises(RecordError, match=r"bad.json: no usable SFT rows; 2 unusable:\n  .*bad.json: row 0: field "
                                          r"'conversations' is a string that is neither JSON[\s\S]*row 1: expected an "
                                          r"object with 'conversations', got dict"):
        read_sharegpt(only_bad)


def test_sft_cli_skips_bad_rows_with_a_logged_count(tmp_path, monkeypatch, capsys):
    path, _, _ = coldstart_json(tmp_path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["sft", "--config", "sft_tiny", f"--config.data.path={path}", "--config.train.steps=1"]) == 0
    out = capsys.readouterr().out
    assert "sft: 9 unusable row(s) skipped, 3 kept:" in out
    assert f"{path}: row 3: field 'conversations' is a string that is neither JSON nor a Python list literal" in out
    assert json.loads(out.strip().splitlines()[-1])["loss"] > 0


# --------------------------------------------------------------------------------------------------
# The one conversation parser
# --------------------------------------------------------------------------------------------------


def test_python_repr_and_json_conversations_parse_alike_and_bad_ones_are_one_error():
    assert parse_conversations(repr(turns(1, "A"))) == parse_conversations(json.dumps(turns(1, "A"))) == turns(1, "A")
    for text, reason in (("{[]: 1}", "TypeError: unhashable type: 'list'"),
                         (DEEP, "field 'conversations' is nested too deeply to parse (RecursionError)"),
                         # not JSON, so the Python-literal parser would see it: refused unparsed
                         ("(" * 100_000 + ")" * 100_000, f"nested more than {MAX_NESTING} levels deep; refused unparsed"),
                         ("__import__('os').system('true')", "ValueError: malformed node or string"),
                         ("{1, 2}", "must be a non-empty list of turns, got set"),
                         (OVERSIZE, f"field 'conversations' is {len(OVERSIZE)} characters long, over the limit"),
                         (repr([{"from": "human", "value": "<image>"}]), "roles are ['user']")):
        with pytest.raises(RecordError, match=re.escape(reason)):
            parse_conversations(text)
    # the SFT tokeniser applies the same parser to in-memory conversations
    with pytest.raises(ChatFormatError, match=r"^c7: conversations roles are \['assistant'\]"):
        conversation_trajectory([{"from": "gpt", "value": "x"}], [], None, None, name="c7")


def test_image_paths_resolve_inside_the_root_only(tmp_path):
    root = tmp_path / "root"
    inside = put(root / "images" / "a.png", png(5))
    secret, _ = outside_image(tmp_path)
    assert resolve_image(str(inside), [root]) == inside  # absolute, but inside the root
    assert resolve_image("images/../images/a.png", [root]) == inside  # climbs, but stays inside
    assert resolve_image(f"/old/machine/{inside.parent.name}/a.png", [root]) == inside  # moved: found by its tail
    with pytest.raises(RecordError, match=re.escape("image path 'images/../../outside/secret.png' leaves the image "
                                                    f"root ({root})")):
        resolve_image("images/../../outside/secret.png", [root], allow_absolute=True)
    with pytest.raises(RecordError, match=re.escape(f"image path '{secret}' {ABSOLUTE_HINT} ({root})")):
        resolve_image(str(secret), [root])
    assert resolve_image(str(secret), [root], allow_absolute=True) == secret


def rl_prompts_jsonl(tmp_path: Path) -> tuple[Path, Path]:
    """A released-format RL prompt file (JSONL) with two good rows among bad ones."""
    folder = tmp_path / "rl"
    put(folder / "images" / "a.png", png(1))
    put(folder / "images" / "b.png", png(2))
    secret, _ = outside_image(tmp_path)

    def row(doc_id: str, image: object = "images/a.png", **kw: object) -> bytes:
        rec = {"images": [image], "problem": "<image>\nWhich texture?", "solution": "B", "data_source": "x",
               "doc_id": doc_id, **kw}
        return json.dumps(rec).encode()

    lines = [
        row("good0"),
        b'{"images": ["images/a.png"], "problem": "\xff\xfe", "solution": "A"}',  # 1: not UTF-8
        b"[1, 2, 3]",  # 2: not a record
        row("badtype", solution=7),  # 3: solution not a string
        row("climb", image="../outside/secret.png"),  # 4: leaves the root
        row("abs", image=str(secret)),  # 5: absolute, outside the root
        row("missing", image="images/none.png"),  # 6: no such file
        DEEP.encode(),  # 7: too deep
        row("good1", image="images/b.png"),
        b'{"images": ["images/a.png"], "problem": "cut',  # 9: cut short
    ]
    path = put(folder / "train.jsonl", b"\n".join(lines))
    return path, secret


def test_rl_prompt_reader_keeps_good_rows_and_reports_each_bad_one(tmp_path):
    from mini_o3_jax.data.direct import read_prompts

    path, secret = rl_prompts_jsonl(tmp_path)
    bad: list = []
    prompts = read_prompts(path, bad=bad)
    assert [(p.doc_id, Path(p.image).name) for p in prompts] == [("good0", "a.png"), ("good1", "b.png")]
    assert all(Path(p.image).parent == path.parent / "images" for p in prompts)
    reasons = {b.row: b.reason for b in bad}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 9], reasons
    assert "UTF-8" in reasons[1]
    assert "expected a record" in reasons[2]
    assert "expected a string 'solution'" in reasons[3]
    assert "leaves the image root" in reasons[4]
    assert ABSOLUTE_HINT in reasons[5]
    assert "not found" in reasons[6]
    assert all(str(path) == b.source for b in bad)
    # the explicit option reads the absolute path too, and nothing else changes
    bad = []
    prompts = read_prompts(path, allow_absolute_images=True, bad=bad)
    assert [p.doc_id for p in prompts] == ["good0", "abs", "good1"] and prompts[1].image == str(secret)
    assert sorted(b.row for b in bad) == [1, 2, 3, 4, 6, 7, 9]


def test_rl_prompt_file_with_no_usable_row_is_one_error(tmp_path):
    from mini_o3_jax.data.direct import read_prompts
    from mini_o3_jax.errors import ConfigError

    path = put(tmp_path / "bad.json", json.dumps([{"images": ["../x.png"], "problem": "p", "solution": "s"}]).encode())
    with pytest.raises(ConfigError, match=r"no usable RL prompt record \(1 bad\):\n.*row 0: image path '../x.png' "
                                          r"leaves the image root"):
        read_prompts(path)
