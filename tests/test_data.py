"""Dataset layer: every published format parsed field by field from fixtures built here in the
published layouts (with malformed rows), the registry, TFDS preparation and grain loading."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mini_o3_jax.data import loader
from mini_o3_jax.data.benchmarks import (
    BENCHMARKS,
    PAPER_COLUMNS,
    iter_source,
    read_conversations,
    read_source,
)
from mini_o3_jax.data.formats import hrbench_problem, mme_problem, vstar_problem
from mini_o3_jax.data.records import (
    BadRecord,
    ConversationRecord,
    Record,
    RecordError,
    SourceError,
    answer_letter,
    parse_options,
)

VSTAR_TAIL = "Answer with the option's letter from the given choices directly."
MME_TAIL = ("Select the best answer to the above multiple-choice question based on the image. Respond with only "
            "the letter (A, B, C, D, or E) of the correct option.\nThe best answer is: ")


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (32, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def reasons(bad: list[BadRecord]) -> dict[str, str]:
    return {str(b.doc_id): b.reason for b in bad}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def test_parse_options_and_answer_letter():
    assert parse_options("Q?\n(A) red\n(B) dark blue\nAnswer.") == ["red", "dark blue"]
    assert parse_options("Q? (A) red (B) blue (C) green") == ["red", "blue", "green"]
    assert parse_options("a stray (C) is not an option list") == []
    assert parse_options("Q\n(A) x\n(C) y") == []  # letters must run A, B, ...
    opts = ["red", "blue"]
    assert [answer_letter(a, opts) for a in ("B", "(B)", "B.", "(B) blue", "Blue", " red ")] == list("BBBBBA")
    with pytest.raises(RecordError, match="'C' is not among the options A-B"):
        answer_letter("C", opts)
    with pytest.raises(RecordError, match="neither an option letter"):
        answer_letter("green", opts)


def test_registry_names_columns_and_scorers():
    expected = {"visualprobe_train", "visualprobe_easy", "visualprobe_medium", "visualprobe_hard",
                "deepeyes_train_4k", "vstar", "hrbench_4k", "hrbench_8k", "mme_realworld", "coldstart",
                "synthetic_train", "synthetic_easy", "synthetic_medium", "synthetic_hard"}
    assert set(BENCHMARKS) == expected
    assert sorted(i.paper_column for i in BENCHMARKS.values() if i.paper_column) == sorted(PAPER_COLUMNS)
    assert {n for n, i in BENCHMARKS.items() if i.scorer == "choice"} == {"vstar", "hrbench_4k", "hrbench_8k",
                                                                          "mme_realworld"}
    assert BENCHMARKS["visualprobe_hard"].hf_repo == "Mini-o3/VisualProbe_Hard"
    assert BENCHMARKS["hrbench_8k"].files == ("hr_bench_8k.parquet", "hr_bench_8k.tsv")
    assert BENCHMARKS["vstar"].files[:2] == ("val.json", "test_questions.jsonl")
    assert BENCHMARKS["synthetic_medium"].category == "medium"


def test_missing_source_and_unknown_layout(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_source("visualprobe_hard", tmp_path / "nope")
    with pytest.raises(SourceError, match="expected one of: val.json"):
        read_source("visualprobe_hard", tmp_path)
    with pytest.raises(KeyError, match="unknown benchmark 'vp'"):
        read_source("vp", tmp_path)


# --------------------------------------------------------------------------------------------------
# Mini-o3 JSON (VisualProbe, DeepEyes, synthetic)
# --------------------------------------------------------------------------------------------------


def visualprobe_fixture(root: Path) -> tuple[Path, list[bytes]]:
    """VisualProbe_Hard as downloaded: val.json + data/*.jpg, image paths relative to the parent dir
    (Mini-o3's $BASE_IMAGE_DIR) or to the JSON's own dir; plus malformed rows."""
    folder = root / "VisualProbe_Hard"
    imgs = [image_bytes(0, "JPEG"), image_bytes(1, "PNG"), image_bytes(2, "JPEG")]
    write(folder / "data/visual_probe_hard_0.jpg", imgs[0])
    write(folder / "data/visual_probe_hard_1.png", imgs[1])
    write(folder / "data/visual_probe_hard_2.jpg", imgs[2])
    write(folder / "data/broken.jpg", b"\xff\xd8not really a jpeg")
    row = {"data_source": "visual_probe_hard", "solution": "red"}
    rows = [
        {**row, "images": ["VisualProbe_Hard/data/visual_probe_hard_0.jpg"], "doc_id": 0,
         "problem": "<image>\nWhat color is the kite?"},
        {**row, "images": ["data/visual_probe_hard_1.png"], "doc_id": "1", "problem": "<image>\nWhat is it?",
         "solution": "a lamp"},
        {**row, "images": ["VisualProbe_Hard/data/missing.jpg"], "doc_id": "2", "problem": "<image>\nQ"},
        {**row, "images": ["VisualProbe_Hard/data/visual_probe_hard_2.jpg"], "doc_id": "3", "problem": "Q?"},
        {**row, "images": ["VisualProbe_Hard/data/visual_probe_hard_2.jpg"], "doc_id": "4",
         "problem": "<image>\nQ", "solution": "  "},
        {**row, "images": ["VisualProbe_Hard/data/visual_probe_hard_2.jpg"], "problem": "<image>\nQ"},
        {**row, "images": ["VisualProbe_Hard/data/broken.jpg"], "doc_id": "6", "problem": "<image>\nQ"},
        {**row, "images": ["VisualProbe_Hard/data/visual_probe_hard_2.jpg"], "doc_id": "1",
         "problem": "<image>\nDuplicate id"},
        {**row, "images": ["a.jpg", "b.jpg"], "doc_id": "8", "problem": "<image>\nQ"},
        {**row, "images": ["VisualProbe_Hard/data/visual_probe_hard_2.jpg"], "doc_id": "9",
         "problem": "<image>\nHow many?", "solution": 3},
    ]
    write(folder / "val.json", json.dumps(rows))
    return folder, imgs


def test_minio3_json_visualprobe(tmp_path):
    folder, imgs = visualprobe_fixture(tmp_path)
    records, bad = read_source("visualprobe_hard", folder)
    assert records == [
        Record(benchmark="visualprobe_hard", doc_id="0", image=imgs[0], problem="<image>\nWhat color is the kite?",
               solution="red", data_source="visual_probe_hard", options=(), category="hard"),
        Record(benchmark="visualprobe_hard", doc_id="1", image=imgs[1], problem="<image>\nWhat is it?",
               solution="a lamp", data_source="visual_probe_hard", options=(), category="hard"),
        Record(benchmark="visualprobe_hard", doc_id="9", image=imgs[2], problem="<image>\nHow many?", solution="3",
               data_source="visual_probe_hard", options=(), category="hard"),
    ]
    assert records[0].scorer == "exact" and not records[0].multiple_choice
    assert len(bad) == 7
    why = reasons(bad)
    assert "image file 'VisualProbe_Hard/data/missing.jpg' not found" in why["2"]
    assert "field 'problem' must contain exactly one '<image>' placeholder, found 0" in why["3"]
    assert "missing field 'solution'" in why["4"]
    assert "missing field 'doc_id'" in why[""]
    assert "do not decode as an image" in why["6"]
    assert "duplicate doc_id '1'" in why["1"]
    assert "exactly one image path" in why["8"]
    assert all(b.source.endswith("val.json") for b in bad)
    assert [b.row for b in bad] == [2, 3, 4, 5, 6, 7, 8]


def test_minio3_json_image_root_and_renamed_folder(tmp_path):
    folder, imgs = visualprobe_fixture(tmp_path)
    renamed = folder.rename(tmp_path / "vp_hard")  # "VisualProbe_Hard/..." paths are found by their tail
    records, _ = read_source("visualprobe_hard", renamed)
    assert [r.image for r in records] == [imgs[0], imgs[1], imgs[2]]
    # an explicit image_root is the only root tried
    records, bad = read_source("visualprobe_hard", renamed / "val.json", image_root=tmp_path / "elsewhere")
    assert records == [] and all("not found" in b.reason or "placeholder" in b.reason or "missing field" in b.reason
                                 or "exactly one image" in b.reason for b in bad)


def test_minio3_jsonl_synthetic(tmp_path):
    img = image_bytes(5)
    write(tmp_path / "images/s0.png", img)
    lines = [json.dumps({"images": ["images/s0.png"], "doc_id": "s0", "problem": "<image>\nHow many dots?",
                         "solution": "7", "data_source": "synthetic_easy"}),
             "{not json",
             "",
             json.dumps({"images": ["images/s0.png"], "doc_id": "s2", "problem": "<image>\nColor?",
                         "solution": "blue", "category": "easy-colors"})]
    write(tmp_path / "val.jsonl", "\n".join(lines) + "\n")
    records, bad = read_source("synthetic_easy", tmp_path)
    assert records == [Record(benchmark="synthetic_easy", doc_id="s0", image=img, problem="<image>\nHow many dots?",
                              solution="7", data_source="synthetic_easy", options=(), category="easy"),
                       Record(benchmark="synthetic_easy", doc_id="s2", image=img, problem="<image>\nColor?",
                              solution="blue", data_source="synthetic_easy", options=(), category="easy-colors")]
    assert len(bad) == 1 and bad[0].row == 1 and "line 2 is not JSON" in bad[0].reason


# --------------------------------------------------------------------------------------------------
# V*: Mini-o3's val.json, craigwu/vstar_bench's test_questions.jsonl and per-image annotations
# --------------------------------------------------------------------------------------------------


def test_vstar_minio3_json_options_lifted(tmp_path):
    img = image_bytes(7, "JPEG")
    write(tmp_path / "Vstar_Bench/images/sa_1.jpg", img)
    problem = "<image>\nWhat is the color of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\n" + VSTAR_TAIL
    base = {"images": ["Vstar_Bench/images/sa_1.jpg"], "problem": problem, "data_source": "vstar_bench"}
    rows = [{**base, "doc_id": "a", "solution": "B"},
            {**base, "doc_id": "b", "solution": "green"},      # option text -> its letter
            {**base, "doc_id": "c", "solution": "(D) white"},
            {**base, "doc_id": "d", "solution": "purple"},     # matches nothing
            {**base, "doc_id": "e", "solution": "E"},          # letter beyond the options
            {**base, "doc_id": "f", "problem": "<image>\nWhat is written on the sign?", "solution": "STOP"}]
    write(tmp_path / "Vstar_Bench/val.json", json.dumps(rows))
    records, bad = read_source("vstar", tmp_path / "Vstar_Bench")
    assert [(r.doc_id, r.solution, r.options) for r in records] == [
        ("a", "B", ("red", "blue", "green", "white")), ("b", "C", ("red", "blue", "green", "white")),
        ("c", "D", ("red", "blue", "green", "white")), ("f", "STOP", ())]
    assert records[0].problem == problem and records[0].image == img and records[0].answer_text == "blue"
    assert records[0].scorer == "choice" and records[3].scorer == "exact"
    why = reasons(bad)
    assert "field 'solution': answer 'purple' is neither an option letter A-D" in why["d"]
    assert "field 'solution': answer letter 'E' is not among the options A-D" in why["e"]


def test_vstar_original_layout(tmp_path):
    imgs = [image_bytes(10, "JPEG"), image_bytes(11, "PNG")]
    write(tmp_path / "direct_attributes/sa_4690.jpg", imgs[0])
    write(tmp_path / "relative_position/sa_1.png", imgs[1])
    text0 = "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n" + VSTAR_TAIL
    text1 = "Is the cup on the left or right of the dog?\n(A) left\n(B) right\n" + VSTAR_TAIL
    rows = [{"question_id": 0, "image": "direct_attributes/sa_4690.jpg", "text": text0,
             "category": "direct_attributes", "label": "A"},
            {"question_id": 1, "image": "relative_position/sa_1.png", "text": text1,
             "category": "relative_position", "label": "B"},
            {"question_id": 2, "image": "relative_position/sa_1.png", "text": text1,
             "category": "relative_position", "label": "C"},
            {"question_id": 3, "image": "relative_position/sa_1.png", "text": "No options here?",
             "category": "relative_position", "label": "A"}]
    write(tmp_path / "test_questions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    records, bad = read_source("vstar", tmp_path)
    assert records == [
        Record(benchmark="vstar", doc_id="0", image=imgs[0], problem="<image>\n" + text0, solution="A",
               data_source="vstar_bench", options=("rubber", "cotton", "kevlar", "leather"),
               category="direct_attributes"),
        Record(benchmark="vstar", doc_id="1", image=imgs[1], problem="<image>\n" + text1, solution="B",
               data_source="vstar_bench", options=("left", "right"), category="relative_position")]
    why = reasons(bad)
    assert "field 'label': answer letter 'C' is not among the options A-B" in why["2"]
    assert "no '(A) ...' option lines" in why["3"]


def test_vstar_annotation_layout(tmp_path):
    img = image_bytes(12, "JPEG")
    write(tmp_path / "direct_attributes/sa_4690.jpg", img)
    write(tmp_path / "direct_attributes/sa_4690.json",
          json.dumps({"target_object": ["glove"], "bbox": [[1, 2, 3, 4]], "question": "What is the material of the "
                      "glove?", "options": ["rubber", "cotton", "kevlar", "leather"]}))
    write(tmp_path / "relative_position/sa_9.json", json.dumps({"question": "Where?", "options": ["left", "right"]}))
    records, bad = read_source("vstar", tmp_path)
    problem = "<image>\nWhat is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n" + \
        VSTAR_TAIL
    assert records == [Record(benchmark="vstar", doc_id="direct_attributes/sa_4690", image=img, problem=problem,
                              solution="A", data_source="vstar_bench",
                              options=("rubber", "cotton", "kevlar", "leather"), category="direct_attributes")]
    assert vstar_problem("What is the material of the glove?", ["rubber", "cotton", "kevlar", "leather"]) == problem
    assert len(bad) == 1 and bad[0].doc_id == "relative_position/sa_9" and "no image beside" in bad[0].reason


# --------------------------------------------------------------------------------------------------
# HR-Bench: TSV (base64) and parquet
# --------------------------------------------------------------------------------------------------

HR_COLUMNS = ["index", "question", "answer", "category", "cycle_category", "A", "B", "C", "D", "image"]


def hrbench_rows(imgs: list[bytes]) -> list[dict]:
    base = {"category": "single", "cycle_category": "c0", "A": "red", "B": "blue", "C": "green", "D": "white"}
    return [
        {**base, "index": 0, "question": "What color is the car? ", "answer": "B", "image": b64(imgs[0])},
        {**base, "index": 1, "question": "What color is the roof?", "answer": "D", "category": "cross",
         "image": b64(imgs[1])},
        {**base, "index": 2, "question": "Q?", "answer": "E", "image": b64(imgs[0])},
        {**base, "index": 3, "question": "Q?", "answer": "A", "image": "@@not base64@@"},
        {**base, "index": 4, "question": "", "answer": "A", "image": b64(imgs[0])},
        {**base, "index": 5, "question": "Q?", "answer": "A", "C": "", "image": b64(imgs[0])},
        {**base, "index": 6, "question": "Q?", "answer": "A", "image": "0"},
    ]


def check_hrbench(records: list[Record], bad: list[BadRecord], imgs: list[bytes], name: str) -> None:
    opts = ("red", "blue", "green", "white")
    assert records == [
        Record(benchmark=name, doc_id="0", image=imgs[0],
               problem="<image>\nWhat color is the car?\nA. red\nB. blue\nC. green\nD. white\n"
                       "Answer the option letter directly.",
               solution="B", data_source=name.replace("hrbench", "hr_bench"), options=opts, category="single"),
        Record(benchmark=name, doc_id="1", image=imgs[1], problem=hrbench_problem("What color is the roof?", opts),
               solution="D", data_source=name.replace("hrbench", "hr_bench"), options=opts, category="cross")]
    why = reasons(bad)
    assert len(bad) == 5
    assert "field 'answer': answer letter 'E' is not among the options A-D" in why["2"]
    assert "field 'image' is not valid base64" in why["3"]
    assert "missing field 'question'" in why["4"]
    assert "do not run A, B, C, ... without a gap" in why["5"]
    assert "VLMEvalKit reference" in why["6"]


def test_hrbench_tsv(tmp_path):
    imgs = [image_bytes(20, "JPEG"), image_bytes(21, "JPEG")]
    with (tmp_path / "hr_bench_4k.tsv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, HR_COLUMNS, delimiter="\t")
        w.writeheader()
        w.writerows(hrbench_rows(imgs))
    records, bad = read_source("hrbench_4k", tmp_path)
    check_hrbench(records, bad, imgs, "hrbench_4k")


def test_hrbench_parquet_preferred_over_tsv(tmp_path):
    imgs = [image_bytes(22, "JPEG"), image_bytes(23, "PNG")]
    pq.write_table(pa.Table.from_pylist(hrbench_rows(imgs)), tmp_path / "hr_bench_8k.parquet")
    write(tmp_path / "hr_bench_8k.tsv", "garbage that must not be read\n")
    records, bad = read_source("hrbench_8k", tmp_path)
    check_hrbench(records, bad, imgs, "hrbench_8k")


def test_hrbench_parquet_binary_image_column(tmp_path):
    imgs = [image_bytes(24, "JPEG"), image_bytes(25, "PNG")]
    rows = [{**r, "image": base64.b64decode(r["image"]) if r["index"] < 2 else b"\x00junk"}
            for r in hrbench_rows(imgs)[:3]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hr_bench_4k.parquet")
    records, bad = read_source("hrbench_4k", tmp_path)
    assert [r.image for r in records] == imgs and len(bad) == 1


def test_hrbench_missing_column_names_file(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"index": 0, "question": "q"}]), tmp_path / "hr_bench_4k.parquet")
    with pytest.raises(RecordError, match=r"hr_bench_4k.parquet: missing column\(s\) \['answer', 'image'\]"):
        read_source("hrbench_4k", tmp_path)


# --------------------------------------------------------------------------------------------------
# MME-RealWorld: lmms-eval parquet shards and the original JSON
# --------------------------------------------------------------------------------------------------


def test_mme_realworld_parquet_shards(tmp_path):
    imgs = [image_bytes(30, "JPEG"), image_bytes(31, "PNG"), image_bytes(32, "JPEG")]
    opts = ["(A) 13", "(B) 90", "(C) 77", "(D) 6", "(E) The image does not feature the buses"]
    base = {"multi-choice options": opts, "category": "Perception/Monitoring", "l2-category": "Vehicle/counting"}
    shard0 = [{**base, "index": 10, "question": "What is the number of buses in the image?", "answer": "E",
               "bytes": b64(imgs[0])},
              {**base, "index": 11, "question": "Q?", "answer": "B", "multi-choice options": ["A) x", "(B) y"],
               "bytes": b64(imgs[0])}]
    shard1 = [{**base, "index": 12, "question": "How many cars?", "answer": "(C)", "bytes": b64(imgs[1])},
              {**base, "index": 10, "question": "dup", "answer": "A", "bytes": b64(imgs[2])}]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(shard1), tmp_path / "data/train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(shard0), tmp_path / "data/train-00000-of-00002.parquet")
    records, bad = read_source("mme_realworld", tmp_path)
    texts = ("13", "90", "77", "6", "The image does not feature the buses")
    assert records == [
        Record(benchmark="mme_realworld", doc_id="10", image=imgs[0],
               problem="<image>\nWhat is the number of buses in the image? The choices are listed below:\n"
                       + "\n".join(opts) + "\n" + MME_TAIL,
               solution="E", data_source="mme_realworld", options=texts, category="Perception/Monitoring"),
        Record(benchmark="mme_realworld", doc_id="12", image=imgs[1], problem=mme_problem("How many cars?", texts),
               solution="C", data_source="mme_realworld", options=texts, category="Perception/Monitoring")]
    why = reasons(bad)
    assert "item 0 is 'A) x'; expected '(A) <option text>'" in why["11"]
    assert "duplicate doc_id '10'" in why["10"] and bad[-1].source.endswith("00001-of-00002.parquet")


def test_mme_realworld_json(tmp_path):
    img = image_bytes(33, "JPEG")
    write(tmp_path / "images/AutonomousDriving/nuScenes/x.jpg", img)
    choices = ["(A) many cars", "(B) one truck", "(C) no vehicles", "(D) two buses", "(E) none of the above"]
    rows = [{"Question_id": "Perception/Autonomous_Driving/Objects_Identify/0000", "Question Type": "Multiple Choice",
             "Image": "AutonomousDriving/nuScenes/x.jpg", "Text": "What is in front of the ego car?",
             "Answer choices": choices, "Ground truth": "D", "Task": "Perception", "Subtask": "Autonomous_Driving",
             "Category": "Objects_Identify"},
            {"Question_id": "q1", "Image": "AutonomousDriving/nuScenes/x.jpg", "Text": "Q",
             "Answer choices": choices, "Ground truth": "F", "Task": "Perception", "Subtask": "Autonomous_Driving"}]
    write(tmp_path / "MME_RealWorld.json", json.dumps(rows))
    records, bad = read_source("mme_realworld", tmp_path, image_root=tmp_path / "images")
    texts = ("many cars", "one truck", "no vehicles", "two buses", "none of the above")
    assert records == [Record(benchmark="mme_realworld", doc_id="Perception/Autonomous_Driving/Objects_Identify/0000",
                              image=img, problem=mme_problem("What is in front of the ego car?", texts),
                              solution="D", data_source="mme_realworld", options=texts,
                              category="Perception/Autonomous_Driving")]
    assert "'Ground truth': answer letter 'F' is not among the options A-E" in reasons(bad)["q1"]


# --------------------------------------------------------------------------------------------------
# Cold-start SFT set
# --------------------------------------------------------------------------------------------------


def coldstart_turns(n_obs: int) -> list[dict[str, str]]:
    turns = [{"from": "system", "value": "You are a helpful assistant."},
             {"from": "human", "value": "<image>\nWhat color is the coat?"}]
    for k in range(n_obs):
        turns += [{"from": "gpt", "value": '<think>zoom</think><grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], '
                                           '"source": "original_image"}</grounding>'},
                  {"from": "human", "value": f"After the above Action {k}, here is the the zoom-in image "
                                             f"(Observation {k + 1}):\n<image>.\nContinue your reasoning process "
                                             "inside <think> and </think>."}]
    return [*turns, {"from": "gpt", "value": "<think>done</think><answer>Orange</answer>"}]


def test_coldstart_parquet(tmp_path):
    imgs = [image_bytes(40), image_bytes(41, "JPEG"), image_bytes(42)]
    t1, t0 = coldstart_turns(1), coldstart_turns(0)
    rows = [
        {"conversations": repr(t1), "images": [{"bytes": imgs[0], "path": None}, {"bytes": imgs[1], "path": None}],
         "image_names": ["0.png", "1.png"], "data_source": "visual_probe_train", "sample_index": 5,
         "rollout_index": 2},
        {"conversations": json.dumps(t0), "images": [{"bytes": imgs[2], "path": "x.png"}],
         "image_names": ["0.png"], "data_source": "deepeyes_train", "sample_index": 7, "rollout_index": 0},
        {"conversations": json.dumps(t1), "images": [{"bytes": imgs[2], "path": None}], "image_names": ["0.png"],
         "data_source": "deepeyes_train", "sample_index": 8, "rollout_index": 0},
        {"conversations": "[{'from': 'human', 'value': ", "images": [], "image_names": [],
         "data_source": "deepeyes_train", "sample_index": 9, "rollout_index": 0},
        {"conversations": json.dumps(t0), "images": [{"bytes": b"garbage", "path": None}], "image_names": ["0.png"],
         "data_source": "deepeyes_train", "sample_index": 10, "rollout_index": 0},
    ]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data/train-00000-of-00001.parquet")
    records, bad = read_conversations(tmp_path)
    assert records == [ConversationRecord("visual_probe_train/5/2", t1, (imgs[0], imgs[1]), "visual_probe_train"),
                       ConversationRecord("deepeyes_train/7/0", t0, (imgs[2],), "deepeyes_train")]
    why = reasons(bad)
    assert "2 <image> placeholder(s) in the human turns but 1 image(s)" in why["deepeyes_train/8/0"]
    assert "neither JSON nor a Python list literal" in why["deepeyes_train/9/0"]
    assert "do not decode as an image" in why["deepeyes_train/10/0"]


def test_coldstart_json_with_moved_absolute_paths(tmp_path):
    imgs = [image_bytes(43), image_bytes(44)]
    write(tmp_path / "out/images/minio3_coldstart_0/0.png", imgs[0])
    write(tmp_path / "out/images/minio3_coldstart_0/1.png", imgs[1])
    gone = "/nonexistent/old_machine/out/images/minio3_coldstart_0"
    rows = [{"conversations": coldstart_turns(1), "images": [f"{gone}/0.png", f"{gone}/1.png"]},
            {"conversations": coldstart_turns(1), "images": [f"{gone}/0.png", f"{gone}/9.png"]}]
    write(tmp_path / "out/Mini-o3-Coldstart.json", json.dumps(rows))
    records, bad = read_conversations(tmp_path / "out")
    assert records == [ConversationRecord("0", coldstart_turns(1), tuple(imgs), "mini_o3_coldstart")]
    assert len(bad) == 1 and bad[0].doc_id == "1" and "9.png' not found" in bad[0].reason


# --------------------------------------------------------------------------------------------------
# TFDS preparation and grain loading
# --------------------------------------------------------------------------------------------------


def test_prepare_load_matches_read_source_and_is_idempotent(tmp_path):
    folder, _ = visualprobe_fixture(tmp_path / "src")
    expected, expected_bad = read_source("visualprobe_hard", folder)
    report = loader.prepare("visualprobe_hard", folder, tmp_path / "tfds")
    assert (report.name, report.num_records, report.reused) == ("visualprobe_hard", 3, False)
    assert report.bad == expected_bad and Path(report.path, "bad_records.jsonl").exists()
    assert "3 record(s)" in report.summary() and "7 unusable" in report.summary()
    ds = loader.load("visualprobe_hard", tmp_path / "tfds")
    assert len(ds) == 3 and list(ds) == expected and ds[2] == expected[2]
    assert loader.bad_records("visualprobe_hard", tmp_path / "tfds") == expected_bad
    stamp = Path(report.path, "dataset_info.json").stat().st_mtime_ns
    again = loader.prepare("visualprobe_hard", folder, tmp_path / "tfds")
    assert again.reused and again.num_records == 3 and again.bad == expected_bad
    assert Path(report.path, "dataset_info.json").stat().st_mtime_ns == stamp
    assert loader.records("visualprobe_hard", tmp_path / "tfds") == expected


def test_prepare_multiple_choice_sets_round_trip(tmp_path):
    imgs = [image_bytes(50, "JPEG"), image_bytes(51, "JPEG")]
    pq.write_table(pa.Table.from_pylist(hrbench_rows(imgs)), tmp_path / "hr_bench_4k.parquet")
    expected, bad = read_source("hrbench_4k", tmp_path)
    report = loader.prepare("hrbench_4k", tmp_path, tmp_path / "tfds")
    assert report.num_records == 2 and report.bad == bad
    assert loader.records("hrbench_4k", tmp_path / "tfds") == expected


def test_prepare_coldstart_gives_conversation_records(tmp_path):
    imgs = [image_bytes(60), image_bytes(61)]
    rows = [{"conversations": repr(coldstart_turns(1)), "images": [{"bytes": i, "path": None} for i in imgs],
             "data_source": "visual_probe_train", "sample_index": 1, "rollout_index": 0}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    records = loader.coldstart_records(tmp_path / "tfds", tmp_path)
    assert list(records) == [ConversationRecord("visual_probe_train/1/0", coldstart_turns(1), tuple(imgs),
                                                "visual_probe_train")]
    expected, _ = read_conversations(tmp_path)
    assert list(loader.load_conversations(tmp_path / "tfds")) == expected


def test_strict_prepare_raises_naming_the_record_and_writes_nothing(tmp_path):
    folder, _ = visualprobe_fixture(tmp_path / "src")
    with pytest.raises(RecordError, match=r"visualprobe_hard: 7 unusable row\(s\)[\s\S]*doc_id 6\)") as err:
        loader.prepare("visualprobe_hard", folder, tmp_path / "tfds", strict=True)
    assert "missing.jpg' not found" in str(err.value)
    with pytest.raises(SourceError, match="not prepared"):
        loader.load("visualprobe_hard", tmp_path / "tfds")
    loader.prepare("visualprobe_hard", folder, tmp_path / "tfds")  # lenient: prepared, bad rows reported
    with pytest.raises(RecordError, match="strict mode"):  # strict on the reused dataset still refuses
        loader.prepare("visualprobe_hard", folder, tmp_path / "tfds", strict=True)


def test_prepare_all_rows_bad_and_overwrite(tmp_path):
    folder, imgs = visualprobe_fixture(tmp_path / "src")
    rows = json.loads((folder / "val.json").read_text())
    write(folder / "val.json", json.dumps(rows[2:4]))
    with pytest.raises(RecordError, match=r"2 unusable row\(s\) \(no usable rows\)"):
        loader.prepare("visualprobe_hard", folder, tmp_path / "tfds")
    write(folder / "val.json", json.dumps(rows[:3]))
    report = loader.prepare("visualprobe_hard", folder, tmp_path / "tfds")
    assert (report.num_records, len(report.bad)) == (2, 1)
    write(folder / "val.json", json.dumps(rows[:2]))
    assert loader.prepare("visualprobe_hard", folder, tmp_path / "tfds").bad != []  # reused as prepared
    report = loader.prepare("visualprobe_hard", folder, tmp_path / "tfds", overwrite=True)
    assert (report.num_records, report.bad, report.reused) == (2, [], False)
    assert [r.image for r in loader.load("visualprobe_hard", tmp_path / "tfds")] == imgs[:2]


def test_iter_source_streams_in_source_order(tmp_path):
    folder, _ = visualprobe_fixture(tmp_path)
    items = list(iter_source("visualprobe_hard", folder))
    assert len(items) == 10
    assert [type(i).__name__ for i in items[:3]] == ["Record", "Record", "BadRecord"]


def test_prepared_coldstart_feeds_sft_like_the_json_read_directly(tmp_path):
    """The prepared cold-start records give the same SFT trajectories as the LLaMA-Factory JSON read directly."""
    from mini_o3_jax.data.direct import read_sharegpt
    from mini_o3_jax.processing.image import ImageProcessor
    from mini_o3_jax.sft.data import sharegpt_trajectories
    from tests.helpers import small_tokenizer, write_sharegpt

    path = write_sharegpt(str(tmp_path / "sft"), 2)
    tok, proc = small_tokenizer(), ImageProcessor(min_pixels=3136, max_pixels=60_000)
    ours = list(sharegpt_trajectories(loader.coldstart_records(tmp_path / "tfds", path), tok, proc,
                                      min_pixels=3136, max_pixels=60_000))
    ref = list(sharegpt_trajectories(read_sharegpt(path), tok, proc, min_pixels=3136, max_pixels=60_000))
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
        np.testing.assert_array_equal(a.grids, b.grids)


def test_rl_prompts_from_prepared_sets_equal_the_json_files(tmp_path):
    """`mini-o3 rl --config.data.sets=a,b` reads prepared sets lazily; the prompts are those of the JSON files."""
    from mini_o3_jax.data.direct import read_prompts
    from mini_o3_jax.rl.data import DatasetPrompts
    from mini_o3_jax.toy.scene import SceneConfig
    from mini_o3_jax.toy.writers import write_benchmark

    cfg = SceneConfig.tiny()
    files = [write_benchmark(str(tmp_path / "src"), level, 3, seed=7, config=cfg) for level in ("easy", "hard")]
    for name, path in zip(("synthetic_easy", "synthetic_hard"), files):
        loader.prepare(name, Path(path).parent, tmp_path / "tfds")
    prompts = DatasetPrompts(["synthetic_easy", "synthetic_hard"], tmp_path / "tfds")
    expected = [p for f in files for p in read_prompts(f)]
    assert len(prompts) == 6
    for got, want in zip(prompts, expected):
        with open(want.image, "rb") as fh:
            assert got.image == fh.read()
        assert (got.problem, got.solution, got.data_source, got.doc_id) == (
            want.problem, want.solution, want.data_source, want.doc_id)
    with pytest.raises(IndexError):
        prompts[6]
