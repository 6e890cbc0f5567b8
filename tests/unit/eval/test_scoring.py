"""MMAD scoring: official rules (with their two faults) and strict mode, on hand-computed fixtures."""

from __future__ import annotations

import csv
import io
import json

import pytest

from adcopilot.errors import AdcopilotError
from adcopilot.eval.scoring import AnswerRecord, load_answers, parse_official, parse_strict, score

YN = {"A": "Yes", "B": "No"}
FOUR = {"A": "A round hole.", "B": "A long scratch.", "C": "A stain.", "D": "A crack."}


def rec(image, qtype, gold, reply, options=None, q=0, error=None):
    return AnswerRecord(image=image, question_type=qtype, gold=gold, reply=reply,
                        options=YN if options is None else options, question_index=q, error=error)


BROKEN = "DS-MVTec/bottle/image/broken/000.png"


def fixture_records():
    return [
        rec(BROKEN, "Anomaly Detection", "A", "A"),                       # abnormal, right
        rec("DS-MVTec/bottle/image/good/001.png", "Anomaly Detection", "B", "A"),  # normal, wrong
        rec("DS-MVTec/bottle/image/good/002.png", "Anomaly Detection", "B", "B"),  # normal, right
        rec(BROKEN, "Defect Classification", "B", "B. A round hole.", FOUR, q=1),  # official: A (article)
        rec(BROKEN, "Defect Description", "A", "none", {}, q=2),          # no letter, no options
        rec(BROKEN, "Defect Analysis", "D", "D", FOUR, q=3),              # official: skipped
        rec(BROKEN, "Object Structure", "A", "A", FOUR, q=4),             # merged into Object Analysis
        rec("MVTec-LOCO/juice/test/logical/000.png", "Anomaly Detection", "A", "Answer: A"),
    ]


def test_official_parser_takes_last_letter_and_the_article():
    assert parse_official("B. A round hole.", FOUR) == "A"  # the known fault
    assert parse_official("I think B, no, C", FOUR) == "C"
    assert parse_official("Answer: A", YN) == "A"
    assert parse_official("yes", YN) == "A"  # fuzzy option match
    assert parse_official("", YN) == "A"  # cutoff 0: even an empty reply gets an option
    assert parse_official("nothing", {}) == "nothing"  # no options: the raw reply stays


def test_strict_parser():
    assert parse_strict("B. A round hole.", FOUR) == "B"
    assert parse_strict("The answer is A because the hole is round.", FOUR) == "A"
    assert parse_strict("A. A round hole.", FOUR) == "A"
    assert parse_strict("(C)", FOUR) == "C"
    assert parse_strict("E", FOUR) is None  # not an option
    assert parse_strict("", YN) is None
    assert parse_strict("No, the object looks fine.", YN) == "B"
    assert parse_strict("A stain.", FOUR) == "C"  # option text, no answer letter
    assert parse_strict("maybe", YN) is None


def test_official_table_hand_computed():
    t = score(fixture_records(), "official")
    assert t.columns == ["Anomaly Detection", "Defect Classification", "Defect Description", "Defect Analysis",
                         "Object Analysis", "Average", "Recall", "Precision", "F1", "Overkill", "Miss"]
    ds = t.rows["DS-MVTec"]
    assert ds["Anomaly Detection"] == pytest.approx(75.0)  # (1/2 normal + 1/1 anomalous) / 2
    assert ds["Defect Classification"] == 0.0  # "B. A round hole." read as A
    assert ds["Defect Description"] == 0.0  # dropped: no questions left, official writes 0
    assert ds["Defect Analysis"] == 0.0  # skipped by the remove-while-iterating fault
    assert ds["Object Analysis"] == 100.0
    assert ds["Average"] == pytest.approx(35.0)
    assert (ds["Recall"], ds["Precision"]) == (pytest.approx(100.0), pytest.approx(50.0))
    assert ds["F1"] == pytest.approx(200 / 3)
    assert (ds["Overkill"], ds["Miss"]) == (pytest.approx(50.0), pytest.approx(0.0))
    loco = t.rows["MVTec-LOCO"]
    assert loco["Anomaly Detection"] == pytest.approx(50.0)  # no normal image: normal accuracy 0
    assert loco["Average"] == pytest.approx(10.0)
    assert t.rows["Average"]["Anomaly Detection"] == pytest.approx(62.5)
    assert t.headline == pytest.approx(22.5)
    assert (t.n_dropped, t.n_skipped, t.n_counted) == (1, 1, 6)
    assert t.counts["DS-MVTec"]["Defect Analysis"] == {"total": 0, "correct": 0}


def test_strict_table_hand_computed():
    t = score(fixture_records(), "strict")
    ds = t.rows["DS-MVTec"]
    assert ds["Defect Classification"] == 100.0
    assert ds["Defect Description"] == 0.0  # unparsable counts wrong
    assert ds["Defect Analysis"] == 100.0
    assert ds["Average"] == pytest.approx(75.0)
    loco = t.rows["MVTec-LOCO"]
    assert loco["Anomaly Detection"] == 100.0  # only the anomalous side exists
    assert loco["Defect Classification"] is None and loco["Average"] == 100.0
    assert loco["Overkill"] is None and loco["Miss"] == 0.0
    assert t.headline == pytest.approx(87.5)
    assert (t.n_dropped, t.n_skipped, t.n_unparsable, t.n_counted) == (0, 0, 1, 8)


def test_skip_after_drop_is_exactly_one_record():
    recs = [
        rec("D/c/good/0.png", "Object Classification", "A", "??", {}),  # dropped
        rec("D/c/good/1.png", "Object Classification", "A", "A", {}),  # skipped (would be right)
        rec("D/c/good/2.png", "Object Classification", "A", "B", {}),  # counted, wrong
        rec("D/c/good/3.png", "Object Classification", "Q", "A", {}),  # gold not a letter: dropped
        rec("D/c/good/4.png", "Object Classification", "A", "??", {}),  # skipped, though invalid itself
        rec("D/c/good/5.png", "Object Classification", "A", "A", {}),  # counted, right
    ]
    t = score(recs, "official")
    assert t.counts["D"]["Object Classification"] == {"total": 2, "correct": 1}
    assert (t.n_dropped, t.n_skipped) == (2, 2)
    s = score(recs, "strict")
    assert s.counts["D"]["Object Classification"] == {"total": 6, "correct": 2}
    assert s.n_invalid_gold == 1


def test_errors_left_out_officially_counted_wrong_strictly():
    recs = [rec("D/c/bad/0.png", "Anomaly Detection", "A", "A"),
            rec("D/c/bad/1.png", "Anomaly Detection", "A", "", error="q.png: no such file")]
    assert score(recs, "official").rows["D"]["Anomaly Detection"] == 50.0  # (0 normal + 1) / 2
    assert score(recs, "strict").rows["D"]["Anomaly Detection"] == 50.0  # 1 of 2 anomalous right
    assert score(recs, "official").counts["D"]["Anomaly Detection"]["total"] == 1
    assert score(recs, "strict").counts["D"]["Anomaly Detection"]["total"] == 2


def test_csv_and_json_layout(tmp_path):
    t = score(fixture_records(), "official")
    t.to_csv(tmp_path / "s.csv")
    t.to_json(tmp_path / "s.json")
    rows = list(csv.reader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert rows[0][0] == "" and rows[0][1] == "Anomaly Detection" and rows[0][-2:] == ["Overkill", "Miss"]
    assert [r[0] for r in rows[1:]] == ["DS-MVTec", "MVTec-LOCO", "Average"]
    assert float(rows[1][rows[0].index("Average")]) == pytest.approx(35.0)
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["scoring"] == "official" and data["table"]["Average"]["Average"] == pytest.approx(22.5)
    assert "MVTec-LOCO" in t.format()


def test_load_answers_jsonl_latest_line_wins_and_official_json(tmp_path):
    p = tmp_path / "answers.jsonl"
    lines = [
        {"image": BROKEN, "q": 0, "type": "Anomaly Detection", "gold": "A", "reply": "", "error": "down"},
        {"image": BROKEN, "q": 0, "type": "Anomaly Detection", "gold": "A", "reply": "A", "options": YN},
    ]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    recs = load_answers(p)
    assert len(recs) == 1 and recs[0].reply == "A" and recs[0].error is None
    off = tmp_path / "answers_1_shot_x.json"
    off.write_text(json.dumps([{"image": BROKEN, "question": {"type": "text", "text": "Q"},
                                "question_type": "Anomaly Detection", "correct_answer": "A", "gpt_answer": "A"}]))
    assert score(load_answers(off)).rows["DS-MVTec"]["Anomaly Detection"] == 50.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": 1}\n')
    with pytest.raises(AdcopilotError, match="bad.jsonl: line 1"):
        load_answers(bad)
    with pytest.raises(AdcopilotError, match="unknown scoring mode"):
        score(recs, "lenient")


def official_answer(image, gold, answer, options=YN):
    """One entry as the benchmark's query scripts write it: ``gpt_answer`` is their parse of the reply."""
    text = "Question: Is there any defect in the object? \n" + "".join(f"{k}. {v}\n" for k, v in options.items())
    return {"image": image, "question": {"type": "text", "text": text, "options": options},
            "question_type": "Anomaly Detection", "correct_answer": gold, "gpt_answer": answer}


def test_official_answers_file_compares_the_stored_strings(tmp_path):
    """The official summary: ``gpt_answer`` not in A-E -> removed while iterating, so the next
    entry is never looked at either; everything else compared as the string it is."""
    good, bad = "DS-MVTec/bottle/image/good/{}.png", "DS-MVTec/bottle/image/broken/{}.png"
    answers = [
        official_answer(good.format(0), "B", "B"),     # normal, right
        official_answer(bad.format(1), "A", ""),       # empty: removed...
        official_answer(bad.format(2), "A", "B"),      # ...and this one stepped over
        official_answer(bad.format(3), "A", "A"),      # anomalous, right
        official_answer(bad.format(4), "A", "A."),     # not a letter as stored: removed...
        official_answer(good.format(5), "B", "A"),     # ...and stepped over
        official_answer(good.format(6), "B", "A"),     # normal, wrong
        official_answer(good.format(7), "B", "b"),     # lower case: removed (nothing follows)
    ]
    path = tmp_path / "answers_1_shot_model.json"
    path.write_text(json.dumps(answers, indent=4))
    table = score(load_answers(path), "official")
    # counted: normal 0 (right), 6 (wrong); anomalous 3 (right) -> (1/2 + 1/1) / 2
    assert table.rows["DS-MVTec"]["Anomaly Detection"] == 75.0
    assert (table.n_counted, table.n_dropped, table.n_skipped) == (3, 3, 2)
    assert table.rows["DS-MVTec"]["Overkill"] == 50.0 and table.rows["DS-MVTec"]["Miss"] == 0.0
    # Strict: nothing dropped or skipped; a stored non-letter counts wrong, never re-read as "A"/"B".
    strict = score(load_answers(path), "strict")
    assert strict.n_unparsable == 3 and strict.n_counted == 8
    # normal: 0 right, 5 wrong, 6 wrong, 7 wrong ("b"); anomalous: 1 wrong (""), 2 wrong, 3 right, 4 wrong ("A.")
    assert strict.rows["DS-MVTec"]["Anomaly Detection"] == pytest.approx(100 * (1 / 4 + 1 / 4) / 2)


def test_eval_score_on_an_official_answers_file(tmp_path):
    from adcopilot.cli import main

    path = tmp_path / "answers_1_shot_model.json"
    path.write_text(json.dumps([official_answer("D/c/test/good/0.png", "B", "B"),
                                official_answer("D/c/test/bad/1.png", "A", ""),
                                official_answer("D/c/test/bad/2.png", "A", "A")]))
    main(["eval", "score", str(path), "--json", str(tmp_path / "t.json")])
    table = json.loads((tmp_path / "t.json").read_text())
    # "" dropped and the next entry skipped: only the normal image is counted (anomalous side 0).
    assert table["table"]["D"]["Anomaly Detection"] == 50.0 and table["dropped"] == 1 and table["skipped"] == 1


def test_strict_parser_skips_what_is_no_answer_and_goes_on():
    assert parse_strict("E.g. a crack, so B.", FOUR) == "B"  # an abbreviation's capital is no answer
    assert parse_strict("E is not listed; C", FOUR) == "C"  # nor a letter that is no option
    assert parse_strict("A round hole? No, C.", FOUR) == "C"  # nor the article


def test_strict_parser_by_option_words_longest_wins_equal_ones_are_ambiguous():
    assert parse_strict("a deep scratch on the cap", {"A": "scratch", "B": "deep scratch"}) == "B"
    assert parse_strict("a deep scratch on the cap", {"A": "deep scratch", "B": "scratch"}) == "A"
    assert parse_strict("a crack and a stain", FOUR) is None  # "A crack." and "A stain.": two words each
    assert parse_strict("a crack, a stain and a hole", {"A": "crack", "B": "stain", "C": "hole"}) is None
    assert parse_strict("maybe", {"A": "crack", "B": "..."}) is None  # an option without words is never named


def test_each_mode_reads_a_reply_against_its_questions_options():
    recs = [rec("D/c/bad/0.png", "Defect Classification", "C", "A stain.", FOUR),  # strict: the option's words
            rec("D/c/bad/1.png", "Defect Classification", "A", "yes", YN),  # both: the option "Yes"
            rec("D/c/bad/2.png", "Defect Classification", "B", "B", {})]
    assert score(recs, "strict").counts["D"]["Defect Classification"] == {"total": 3, "correct": 3}
    # official: "A stain." is read as A (the article); "yes" is closest to the option text "Yes".
    assert score(recs, "official").counts["D"]["Defect Classification"] == {"total": 3, "correct": 2}


def test_stored_answers_are_valid_when_they_are_an_option_of_their_question():
    def stored(answer, options):
        return AnswerRecord(image="D/c/bad/0.png", question_type="Defect Classification", gold="A", reply=answer,
                            options=options, parsed=True)

    strict = score([stored("C", YN), stored("A", {}), stored("A", YN)], "strict")
    assert strict.n_unparsable == 1 and strict.counts["D"]["Defect Classification"] == {"total": 3, "correct": 2}
    official = score([stored("C", YN), stored("A", YN)], "official")  # compared as written: C is a wrong letter
    assert official.counts["D"]["Defect Classification"] == {"total": 2, "correct": 1} and official.n_dropped == 0


def test_failed_questions_are_counted_and_never_right():
    recs = [rec("D/c/bad/0.png", "Object Classification", "A", "A", {}),
            rec("D/c/bad/1.png", "Object Classification", "A", "B", {}),
            rec("D/c/bad/2.png", "Object Classification", "A", "A", {}),
            rec("D/c/bad/3.png", "Object Classification", "A", "A", {}, error="timed out")]  # a reply, but failed
    strict, official = score(recs, "strict"), score(recs, "official")
    assert strict.n_errors == official.n_errors == 1
    assert strict.rows["D"]["Object Classification"] == 50.0  # 2 of 4: the failed one counts wrong
    assert official.rows["D"]["Object Classification"] == pytest.approx(200 / 3)  # 2 of 3: left out


def _detection_records():
    """D: 5 anomalous (3 answered right), 3 normal (2 right); E: 2 anomalous (1 right); F: 2 normal
    (1 right); G: no detection question at all."""
    def ad(path, gold, right):
        return rec(path, "Anomaly Detection", gold, gold if right else "AB".replace(gold, ""))

    return [
        *(ad(f"D/c/bad/{i}.png", "A", i < 3) for i in range(5)),
        *(ad(f"D/c/good/{i}.png", "B", i < 2) for i in range(3)),
        *(ad(f"E/c/bad/{i}.png", "A", i < 1) for i in range(2)),
        *(ad(f"F/c/good/{i}.png", "B", i < 1) for i in range(2)),
        rec("G/c/bad/0.png", "Object Classification", "A", "A", {}),
    ]


def test_detection_metrics_hand_computed_in_both_modes():
    for mode in ("official", "strict"):
        d = score(_detection_records(), mode).rows["D"]  # tp 3, fn 2, fp 1, tn 2
        assert d["Anomaly Detection"] == pytest.approx(100 * (2 / 3 + 3 / 5) / 2)
        assert (d["Recall"], d["Precision"]) == (pytest.approx(60.0), pytest.approx(75.0))
        assert d["F1"] == pytest.approx(100 * 2 * 0.75 * 0.6 / 1.35)
        assert (d["Overkill"], d["Miss"]) == (pytest.approx(100 / 3), pytest.approx(40.0))
    official, strict = (score(_detection_records(), m).rows for m in ("official", "strict"))
    # E, anomalous only (tp 1, fn 1, fp 0): official takes the absent normal side as accuracy 0.
    assert (official["E"]["Recall"], official["E"]["Precision"]) == (50.0, 100.0) == (strict["E"]["Recall"],
                                                                                        strict["E"]["Precision"])
    assert (official["E"]["Anomaly Detection"], official["E"]["Overkill"], official["E"]["Miss"]) == (25.0, 100.0, 50.0)
    assert (strict["E"]["Anomaly Detection"], strict["E"]["Overkill"], strict["E"]["Miss"]) == (50.0, None, 50.0)
    # F, normal only (tp 0, fn 0, fp 1): no recall; precision 0.
    assert (official["F"]["Recall"], official["F"]["Precision"], official["F"]["F1"]) == (0.0, 0.0, 0.0)
    assert (strict["F"]["Recall"], strict["F"]["Precision"], strict["F"]["F1"]) == (None, 0.0, None)
    assert (official["F"]["Overkill"], official["F"]["Miss"]) == (50.0, 100.0)
    assert (strict["F"]["Overkill"], strict["F"]["Miss"]) == (50.0, None)
    # G has no detection question: official writes 0, strict leaves it out of the Average row.
    assert official["G"]["Anomaly Detection"] == 0.0 and strict["G"]["Anomaly Detection"] is None
    ad = [strict[k]["Anomaly Detection"] for k in "DEF"]
    assert strict["Average"]["Anomaly Detection"] == pytest.approx(sum(ad) / 3)
    assert official["Average"]["Anomaly Detection"] == pytest.approx(sum(official[k]["Anomaly Detection"] for k in "DEFG") / 4)
    table = score(_detection_records(), "strict")
    assert (table.n_records, table.n_counted, table.n_errors) == (13, 13, 0)


def test_f1_when_precision_equals_recall():
    recs = [rec(f"H/c/{kind}/{i}.png", "Anomaly Detection", gold, gold if i == 0 else "AB".replace(gold, ""))
            for kind, gold in (("bad", "A"), ("good", "B")) for i in range(2)]  # tp 1, fn 1, fp 1, tn 1
    row = score(recs, "strict").rows["H"]
    assert row["Precision"] == row["Recall"] == row["F1"] == 50.0
