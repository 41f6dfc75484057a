"""app/evaluate.py: loading MMOU items, reading choices and spans, and metrics with known values."""

import json

import pytest

from app.evaluate import (DataError, Item, extract_choice, format_table, iou, load_items, predicted_span,
                          question_prompt, resolve_video, score)

LETTERS = "ABCDEFGHIJ"


def raw_item(qid="q1", **kw):
    item = {"question_id": qid, "question": "What is on screen?",
            "options": {k: f"option {k.lower()}" for k in LETTERS}, "correct_option_letter": "B",
            "question_type": ["counting"], "domain": "synthetic", "video": "clips/x.mp4", "video_duration": 60.0,
            "start_time": 10.0, "end_time": 20.0}
    item.update(kw)
    return item


def write(tmp_path, data, name="items.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_load_items_list_and_wrapped(tmp_path):
    items = load_items(write(tmp_path, [raw_item("a"), raw_item(7, start_time="00:01:05", end_time="1:10.5")]))
    assert [i.question_id for i in items] == ["a", "7"]
    assert items[1].span == (65.0, 70.5)
    assert items[0].options["J"] == "option j" and items[0].question_type == ["counting"]
    wrapped = load_items(write(tmp_path, {"items": [raw_item(question_type="counting", start_time=None,
                                                             end_time=None)]}))
    assert wrapped[0].question_type == ["counting"] and wrapped[0].span is None


@pytest.mark.parametrize("data, message", [
    ({"questions": []}, "expected a JSON list"),
    ([], "no items"),
    (["x"], "item 0: expected an object"),
    ([{k: v for k, v in raw_item().items() if k != "options"}], "missing field 'options'"),
    ([raw_item(options={"A": "x"})], "field 'options'"),
    ([raw_item(options={"a": "x", "B": "y"})], "key 'a' is not a capital letter"),
    ([raw_item(options={"A": "x", "B": ""})], "option B must be a non-empty string"),
    ([raw_item(correct_option_letter="K")], "field 'correct_option_letter' is 'K'"),
    ([raw_item(question_type=[1])], "field 'question_type'"),
    ([raw_item(start_time=5.0, end_time=None)], "both be given"),
    ([raw_item(start_time=9.0, end_time=2.0)], "ends (2.0) before it starts (9.0)"),
    ([raw_item(start_time="soon")], "field 'start_time'"),
    ([raw_item(start_time=float("nan"))], "field 'start_time'"),
    ([raw_item("a"), raw_item("a")], "question_id 'a' appears twice"),
])
def test_load_items_errors_name_the_field(tmp_path, data, message):
    with pytest.raises(DataError) as e:
        load_items(write(tmp_path, data))
    assert message in str(e.value) and "items.json" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_load_items_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("[1,")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        load_items(tmp_path / "bad.json")
    with pytest.raises(DataError, match="cannot read"):
        load_items(tmp_path / "missing.json")


def test_resolve_video(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "x.mp4").write_bytes(b"")
    (tmp_path / "abc.mp4").write_bytes(b"")
    data = write(tmp_path, [raw_item()])
    item = load_items(data)[0]
    assert resolve_video(item, data) == tmp_path / "clips" / "x.mp4"
    item.video = "abc"                              # MMOU-style id without extension
    assert resolve_video(item, data) == tmp_path / "abc.mp4"
    item.video = "nope.mp4"
    with pytest.raises(DataError, match="video not found"):
        resolve_video(item, data)


OPTIONS = {"A": "a red circle", "B": "a blue square", "C": "the word CAT", "D": "10", "E": "1",
           "F": "from 3.0 s to 5.0 s", "G": "g", "H": "h", "I": "i", "J": "j"}


@pytest.mark.parametrize("text, letter", [
    ("<think>\n<t>1.0-2.0</t> x\n</think>\n(B) a blue square", "B"),
    ("<think>x</think> B", "B"),
    ("<think>x</think>\nB. a blue square", "B"),
    ("<think>x</think> C)", "C"),
    ("<think>x</think> **D**", "D"),
    ("<think>x</think> The answer is (E).", "E"),
    ("<think>x</think> Answer: A", "A"),
    ("<think>x</think> a red circle", "A"),            # option text, not the article "A"
    ("<think>x</think> A red circle.", "A"),
    ("<think>x</think> I think it is the word CAT", "C"),
    ("<think>x</think> 10", "D"),                        # exact text beats "1" inside "10"
    ("<think>x</think> the answer is a blue square", "B"),
    ("B", "B"),                                          # no reasoning at all
    ("<think>the answer is B", None),                    # the reasoning never finished
    ("<think>x</think> none of these", None),
    ("<think>x</think>", None),
    ("<think>x</think> Z", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text, OPTIONS) == letter


def test_predicted_span_is_the_hull_of_the_reasoning():
    assert predicted_span("<think>\n<t>3.0-5.0</t> a\n<t>8.0-9.5</t> b\n</think>\n(B) x") == (3.0, 9.5)
    assert predicted_span("<think>first [00:10 - 00:12], then at 1:05</think> A") == (10.0, 65.0)
    # no span in the reasoning: the answer's (a chosen time-range option)
    assert predicted_span("<think>no times</think> (F) from 3.0 s to 5.0 s") == (3.0, 5.0)
    assert predicted_span("<think>no times</think> (A)") is None
    assert predicted_span("<t>2-4</t> no think tags") == (2.0, 4.0)
    # a tagged trace is grounded by its tags: a caption quoted on the way, with its own times, is not a step
    quoted = "<think>\n<t>29.0-29.5</t> a\n(heard from second 26: a hiss 27.0-27.6)\n<t>30.0-30.7</t> b\n</think>\nx"
    assert predicted_span(quoted) == (29.0, 30.7)
    # the media length decides MM.SS readings
    assert predicted_span("<think><t>0.574-1.034</t></think> A", media_duration=120) == (57.4, 63.4)
    assert predicted_span("<think><t>0.574-1.034</t></think> A", media_duration=10) == (0.574, 1.034)


def test_iou():
    assert iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert iou((0, 10), (0, 10)) == 1.0
    assert iou((0, 1), (2, 3)) == 0.0
    assert iou((4, 4), (4, 4)) == 1.0          # the same point
    assert iou((4, 4), (0, 10)) == 0.0
    assert iou(None, (0, 1)) == 0.0


def _items():
    skills = [["counting"], ["counting", "temporal understanding"], ["needle-in-the-haystack"],
              ["temporal understanding"], ["counting"]]
    out = []
    for k, sk in enumerate(skills):
        out.append(Item(f"q{k}", "Q?", {L: f"opt {L}" for L in LETTERS}, "C", sk, "v.mp4", 100.0, 10.0, 20.0))
    out[4].start_time = out[4].end_time = None      # an item without an evidence span
    return out


def test_score_known_numbers():
    items = _items()
    predictions = {
        "q0": "<think>\n<t>10.0-20.0</t> exact\n</think>\n(C) opt C",        # right, IoU 1
        "q1": "<think>\n<t>12.0-20.0</t> a\n</think>\n(A) opt A",            # wrong, IoU 0.8
        "q2": "<think>\n<t>15.0-25.0</t> a\n</think>\n(C)",                   # right, IoU 5/15
        "q3": "<think>\nno time at all\n</think>\nC",                          # right, no span: IoU 0
        "q4": "<think>\n<t>1.0-2.0</t> a\n</think>\n(B)",                     # wrong, not grounded
    }
    m = score(items, predictions)
    assert m["n"] == 5 and m["grounded"] == 4
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_skill"] == pytest.approx({"temporal understanding": 1 / 2, "needle-in-the-haystack": 1.0,
                                            "counting": 1 / 3})
    assert list(m["per_skill"]) == ["temporal understanding", "needle-in-the-haystack", "counting"]  # MMOU order
    assert m["per_skill_n"] == {"temporal understanding": 2, "needle-in-the-haystack": 1, "counting": 3}
    assert m["r1_iou_0.3"] == pytest.approx(3 / 4)
    assert m["r1_iou_0.5"] == pytest.approx(2 / 4)
    assert m["r1_iou_0.7"] == pytest.approx(2 / 4)
    assert m["miou"] == pytest.approx((1 + 0.8 + 1 / 3 + 0) / 4)
    assert m["no_choice"] == 0 and m["no_span"] == 1
    # a list in item order gives the same; a missing prediction is wrong and a miss
    assert score(items, [predictions[f"q{k}"] for k in range(5)]) == m
    m2 = score(items, {k: v for k, v in predictions.items() if k != "q0"})
    assert m2["accuracy"] == pytest.approx(2 / 5) and m2["miou"] == pytest.approx((0.8 + 1 / 3) / 4)
    assert json.loads(json.dumps(m)) == m


def test_score_without_spans_and_table():
    items = _items()
    for it in items:
        it.start_time = it.end_time = None
    m = score(items, ["(C)"] * 5)
    assert m["accuracy"] == 1.0 and m["miou"] is None and m["r1_iou_0.5"] is None
    table = format_table(score(_items(), ["<think><t>10-20</t></think> (C)"] * 5))
    assert "accuracy" in table and "100.0%" in table and "mIoU" in table and "1.000" in table
    assert "R@1 IoU>=0.5" in table and "needle-in-the-haystack" in table
    with pytest.raises(ValueError, match="3 predictions for 5 items"):
        score(items, ["A"] * 3)


def test_question_prompt_lists_every_option():
    item = _items()[0]
    text = question_prompt(item)
    assert text.startswith("(A) opt A\n(B) opt B") and "(J) opt J" in text
    assert "timestamps" in text.splitlines()[-2] and text.splitlines()[-1] == "Q?"
