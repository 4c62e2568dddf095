"""Preference data: biglm's A/B format and the chosen/rejected layout mapped to the paper's (y, y', d)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biglm.data.preferences import pair_record, preference_pair, preference_pairs, split_common_prefix
from biglm.data.records import Record, read_records
from biglm.errors import BiglmError


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ab(choice: str, **extra) -> dict:
    return {"prompt": "2+2?", "response_a": "4", "response_b": "5", "choice": choice, **extra}


def test_choices_map_to_the_papers_d(tmp_path: Path) -> None:
    rows = [ab("A", model_a="m1", model_b="m2", annotator="ai"), ab("B"), ab("both_good"), ab("both_bad")]
    pairs = preference_pairs(read_records(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert [p.d for p in pairs] == [-1, 1, 0, 0]
    assert (pairs[0].y, pairs[0].y_prime, pairs[0].model_y, pairs[0].model_y_prime) == ("4", "5", "m1", "m2")
    assert pairs[0].annotator == "ai" and pairs[1].where.endswith("p.jsonl:2")
    # the format round-trips
    again = [preference_pair(Record(pair_record(p), "x")) for p in pairs]
    assert [(p.y, p.y_prime, p.d, p.choice) for p in again] == [(p.y, p.y_prime, p.d, p.choice) for p in pairs]


def test_acceptability_first_overrides_helpfulness() -> None:
    row = ab("A", acceptable_a="unacceptable", acceptable_b="acceptable")
    assert preference_pair(Record(row, "x")).d == -1  # kept, not used, by default
    pair = preference_pair(Record(row, "x"), acceptability_first=True)
    assert pair.d == 1 and pair.acceptable_y == "unacceptable"
    same = ab("both_bad", acceptable_a="acceptable", acceptable_b="acceptable")
    assert preference_pair(Record(same, "x"), acceptability_first=True).d == 0


def test_chosen_rejected_layouts(tmp_path: Path) -> None:
    rows = [{"prompt": "Say hi", "chosen": "hi", "rejected": "no"},
            {"chosen": "\n\nHuman: capital of France?\n\nAssistant: Paris",
             "rejected": "\n\nHuman: capital of France?\n\nAssistant: Pluto"},
            {"chosen": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "go away"}]}]
    pairs = preference_pairs(read_records(write_jsonl(tmp_path / "cr.jsonl", rows)))
    assert [p.d for p in pairs] == [-1, -1, -1]
    assert (pairs[0].prompt, pairs[0].y, pairs[0].y_prime) == ("Say hi", "hi", "no")
    assert pairs[1].prompt == "\n\nHuman: capital of France?\n\nAssistant: "
    assert (pairs[1].y, pairs[1].y_prime) == ("Paris", "Pluto")
    assert pairs[2].prompt == [{"role": "user", "content": "hey"}] and pairs[2].y_prime == "go away"


def test_common_prefix_never_splits_a_word() -> None:
    assert split_common_prefix("Answer: Yes", "Answer: Yeah") == ("Answer: ", "Yes", "Yeah")


def test_hf_source_goes_through_the_records_reader(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 3)
    pairs = preference_pairs(read_records(f"hf:{folder}", split="train"))  # a local dataset folder, hub code path
    assert len(pairs) == 3 and pairs[0].y == "good" and pairs[0].where == f"hf:{folder}[train] row 0"


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "response_a": "x", "choice": "A"}, "p.jsonl:2: missing response field 'response_b'"),
    ({"prompt": "q", "response_a": "x", "response_b": "y", "choice": "C"}, "p.jsonl:2: field 'choice'='C'"),
    ({"prompt": "q", "response_a": "x", "response_b": "", "choice": "A"}, "p.jsonl:2: field 'response_b' must be"),
    ({"prompt": "q", "chosen": "x"}, "p.jsonl:2: missing response field 'rejected'"),
    ({"prompt": "q", "response_a": "x", "response_b": "y", "choice": "A", "acceptable_a": "fine"},
     "p.jsonl:2: field 'acceptable_a'='fine'"),
    ({"text": "hello"}, "p.jsonl:2: not a preference record"),
])
def test_bad_records_name_the_line(tmp_path: Path, row: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [ab("A"), row])
    with pytest.raises(BiglmError) as e:
        preference_pairs(read_records(path))
    assert message in str(e.value) and "\n" not in str(e.value)
