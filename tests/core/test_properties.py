"""Property tests (hypothesis): whatever bytes, text, numbers, nesting and sizes arrive, the record readers, the
preference reader, the chat/completions request validation and the checkpoint loader give a result or ONE-line
``BiglmError``, never another exception. Examples are bounded and derandomised (the same cases on every run,
a few seconds in all); a failure prints the smallest input that shows it. ``BIGLM_PROPERTY_DEPTH=N`` runs N times
as many examples, freshly drawn each run, for a deeper search by hand."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biglm.chat import ChatModel
from biglm.checkpoint import _meta_digest, _records, load_model
from biglm.data.preferences import pair_record, preference_pair
from biglm.data.records import Record, read_records
from biglm.errors import BiglmError
from biglm.files import HASH_NAME
from biglm.serve.validation import ApiRequest, HTTPError, parse_request
from conftest import make_checkpoint
from test_chat import chat_checkpoint

DEPTH = int(os.environ.get("BIGLM_PROPERTY_DEPTH", "1"))
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
BOUNDED = settings(max_examples=60 * DEPTH, deadline=None, derandomize=DEPTH == 1, database=None,
                   suppress_health_check=HEALTH)


def one_line(error: BaseException) -> None:
    assert isinstance(error, BiglmError), repr(error)
    assert str(error).strip() and "\n" not in str(error), repr(str(error))


# --- strategies ------------------------------------------------------------------------------------------------

numbers = (st.integers() | st.integers(min_value=2**62, max_value=10**40) | st.floats() |
           st.sampled_from([0, -1, 1e308, 1e-320, 2**63, 2**64, -(2**63) - 1]))
scalars = st.none() | st.booleans() | numbers | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
# Text that json.dumps never writes: a huge integer, deep nesting, a lone surrogate, 1e999, a BOM, stray bytes.
odd_fragments = st.sampled_from(["9" * 5000, "[" * 3000 + "]" * 3000, '"\\ud800"', "1e999", "-Infinity", "NaN",
                                 "\ufeff{}", "{", '{"a": 1,}', "[1, 2", '"\\u00"', "null"])


@st.composite
def json_text(draw, keys: list[str] | None = None) -> bytes:
    """A JSON object (keys drawn from ``keys`` and arbitrary ones) with odd values, or odd JSON text, as bytes."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=80))
    if choice == 1:
        return draw(odd_fragments).encode("utf-8", "surrogatepass")
    names = st.sampled_from(keys) if keys else st.text(max_size=8)
    obj = draw(st.dictionaries(names | st.text(max_size=6), json_values | odd_fragments.map(lambda f: ("raw", f)),
                               max_size=6))
    parts = [f"{json.dumps(k)}: {v[1] if isinstance(v, tuple) else json.dumps(v)}" for k, v in obj.items()]
    return ("{" + ", ".join(parts) + "}").encode("utf-8", "surrogatepass")


@st.composite
def record_file(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".src", ".jsonl.gz"]))
    lines = draw(st.lists(json_text(["text", "label", "source", "target"]) | st.binary(max_size=40), max_size=5))
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + b"\n".join(lines)
    if suffix == ".json":
        data = draw(st.sampled_from([b"[", b"{\"data\": ["])) + b",".join(lines) + b"]" * draw(st.integers(0, 2))
    if suffix == ".jsonl.gz" and draw(st.booleans()):
        data = gzip.compress(data)
    return suffix, data


# --- the record readers -----------------------------------------------------------------------------------------

@BOUNDED
@given(record_file())
def test_record_reader_gives_records_or_one_line(file):
    suffix, data = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(data)
        (Path(tmp) / "data.tgt").write_bytes(data)
        try:
            records = read_records(str(path))
        except BiglmError as e:
            one_line(e)
            return
        for record in records:
            json.dumps(record.fields, allow_nan=False).encode("utf-8")  # nothing non-finite, no lone surrogate
            for name in [*[*record.fields][:4], "text", "label"]:
                try:
                    record.get(name, (str, int, float), "a value")
                except BiglmError as e:
                    one_line(e)


# --- the preference reader ----------------------------------------------------------------------------------

PREFERENCE_KEYS = ["prompt", "response_a", "response_b", "choice", "chosen", "rejected", "acceptable_a",
                   "acceptable_b", "model_a", "model_b", "annotator"]
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3, None]),
                                           "content": st.text(max_size=8) | json_values}), max_size=3)
preference_values = (st.sampled_from(["A", "B", "both_good", "both_bad", "acceptable", "unacceptable", " "]) |
                     st.text(max_size=10) | messages | json_values)


VALID_PREFERENCES = [
    {"prompt": "p", "response_a": "x", "response_b": "y", "choice": "A", "acceptable_a": "acceptable",
     "acceptable_b": "unacceptable", "model_a": "m1", "model_b": "m2", "annotator": "human"},
    {"prompt": "p", "chosen": "a b", "rejected": "a c"},
    {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}]


@BOUNDED
@given(st.sampled_from(VALID_PREFERENCES), st.dictionaries(st.sampled_from(PREFERENCE_KEYS), preference_values,
                                                           max_size=3), st.booleans())
def test_preference_reader_gives_a_pair_or_one_line(valid, changes, acceptability_first):
    fields = {**valid, **changes}  # a valid record with a few fields changed: every branch gets odd values
    try:
        pair = preference_pair(Record(fields, "prefs.jsonl:1"), acceptability_first)
    except BiglmError as e:
        one_line(e)
        return
    assert pair.d in (-1, 0, 1) and isinstance(pair.y, str) and isinstance(pair.y_prime, str)
    again = preference_pair(Record(json.loads(json.dumps(pair_record(pair))), "again"), acceptability_first)
    assert (again.y, again.y_prime, again.d) == (pair.y, pair.y_prime, pair.d)


@BOUNDED
@given(st.lists(json_text(PREFERENCE_KEYS), min_size=1, max_size=4))
def test_preference_file_gives_pairs_or_one_line(lines):
    from biglm.data.preferences import preference_pairs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prefs.jsonl"
        path.write_bytes(b"\n".join(lines))
        try:
            preference_pairs(read_records(str(path)))
        except BiglmError as e:
            one_line(e)


# --- chat/completions request validation ---------------------------------------------------------------------

@pytest.fixture(scope="module", params=["causal", "masked"])
def chat(request, tmp_path_factory) -> ChatModel:
    return ChatModel.load(chat_checkpoint(tmp_path_factory.mktemp("props") / "ckpt", family=request.param))


REQUEST_FIELDS = {"messages": messages | json_values, "prompt": st.text(max_size=12) | json_values,
                  "temperature": numbers, "top_p": numbers, "top_k": numbers, "seed": numbers,
                  "max_tokens": numbers, "max_completion_tokens": numbers, "steps": numbers, "n": numbers,
                  "stream": json_values, "stop": json_values, "strategy": st.text(max_size=12) | json_values,
                  "length": st.sampled_from(["predict", "fixed"]) | json_values, "logprobs": json_values}
VALID_REQUEST = {"messages": [{"role": "user", "content": "reverse a b"}], "prompt": "a b", "max_tokens": 4}
request_bodies = st.fixed_dictionaries({}, optional=REQUEST_FIELDS).map(
    lambda changes: json.dumps({**VALID_REQUEST, **changes}).encode())  # a valid request, some fields changed


@settings(BOUNDED, max_examples=50 * DEPTH)
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       raw=request_bodies | json_text(list(REQUEST_FIELDS)) | st.binary(max_size=60))
def test_request_validation_gives_a_job_or_a_400(chat, path, raw):
    try:
        job = parse_request(chat, path, raw)
    except HTTPError as e:
        one_line(e)
        assert 400 <= e.status < 500
        return
    assert isinstance(job, ApiRequest)
    # What validation let through generates (or is refused in one line), as the worker would run it.
    try:
        if job.messages is not None:
            chat.replies([job.messages], job.settings)
        else:
            chat.complete([job.prompt], job.settings)
    except BiglmError as e:
        one_line(e)


# --- the checkpoint loader -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("props") / "ckpt")


def reseal(folder: Path) -> None:
    """Records and checksum recomputed for the files as they are (what a crafted meta.json would hold)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["integrity"]["files"] = _records(folder)
    meta["meta_" + HASH_NAME] = _meta_digest(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


CONFIG_FIELDS = ["vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                 "max_seq_len", "rope_theta", "rotary_fraction", "norm", "norm_eps", "tie_embeddings", "family",
                 "position_encoding", "length_head", "max_target_length", "name", "attn_backend", "unknown"]


@st.composite
def damage(draw) -> tuple[str, str, object]:
    """(file, how, what): a file of the checkpoint and what replaces or changes it."""
    target = draw(st.sampled_from(["meta.json", "model_config.yaml", "tokenizer/tokenizer.json",
                                   "model.safetensors"]))
    how = draw(st.sampled_from(["bytes", "field", "cut", "flip"]))
    if how == "bytes":
        return target, how, draw(st.binary(max_size=120) | json_text())
    if how == "field":
        keys = {"meta.json": ["format_version", "step", "files", "integrity", "meta_" + HASH_NAME],
                "model_config.yaml": CONFIG_FIELDS, "tokenizer/tokenizer.json": ["model", "added_tokens", "version",
                                                                                 "normalizer", "pre_tokenizer"],
                "model.safetensors": ["model.embed_tokens.weight", "model.norm.weight", "__metadata__", "extra"]}
        value = draw(json_values | st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "X"]) | json_values,
                                                          "shape": st.lists(numbers, max_size=3) | json_values,
                                                          "data_offsets": st.lists(numbers, max_size=3)}))
        return target, how, (draw(st.sampled_from(keys[target])), value)
    return target, how, draw(st.floats(0, 1))


def apply(folder: Path, target: str, how: str, what: object) -> None:
    path = folder / target
    data = path.read_bytes()
    if target == "model.safetensors":  # the header only: its length prefix, then its JSON
        n = int.from_bytes(data[:8], "little")
        header, body = data[8:8 + n], data[8 + n:]
        header = _changed(header, how, what, json_header=True)
        path.write_bytes(len(header).to_bytes(8, "little") + header + body)
    else:
        path.write_bytes(_changed(data, how, what, json_header=target.endswith(".json")))


def _changed(data: bytes, how: str, what: object, json_header: bool) -> bytes:
    if how == "bytes":
        return what  # type: ignore[return-value]
    if how == "cut":
        return data[: int(len(data) * what)]  # type: ignore[operator]
    if how == "flip":
        i = min(int(len(data) * what), len(data) - 1)  # type: ignore[operator]
        return data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]
    key, value = what  # type: ignore[misc]
    if json_header:
        obj = json.loads(data)
        obj[key] = value
        return json.dumps(obj).encode("utf-8", "surrogatepass")
    obj = yaml.safe_load(data)
    obj[key] = value
    return yaml.safe_dump(obj, allow_unicode=True).encode("utf-8", "surrogatepass")


@settings(BOUNDED, max_examples=100 * DEPTH)
@given(change=damage(), sealed=st.booleans())
def test_checkpoint_loader_gives_a_model_or_one_line(ckpt, change, sealed):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(ckpt, Path(tmp) / "ckpt"))
        apply(folder, *change)
        if sealed and change[0] != "meta.json":
            reseal(folder)  # so that the parsers behind the checksums see the change too
        try:
            loaded = load_model(folder, note=lambda _: None)
        except BiglmError as e:
            one_line(e)
            return
        assert loaded.config.num_parameters() == sum(p.numel() for p in loaded.model.parameters())
