"""Files from others cannot hang or exhaust the machine: a checkpoint whose meta.json lost its integrity record is
refused (a format-1 one, written before records existed, loads with a note that it is unverified); a model config
far beyond its weights (``num_layers: 1000000000000``) is one line at once, in a checkpoint and through
``import-hf``; a garbage ``tokenizer.json`` names the file; a pickle that would run code is "refused: not a safe
format", not "damaged". Where a hostile file could come with a matching meta.json, the tests re-seal it
(records and checksum recomputed, as anyone can) so that the deeper check is what refuses it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from biglm.checkpoint import _meta_digest, _records, load_model, write_checkpoint
from biglm.cli import main
from biglm.config import ModelConfig
from biglm.errors import BiglmError
from biglm.files import HASH_NAME
from biglm.hf.convert import export_hf
from biglm.train import checkpointing
from conftest import make_checkpoint
from test_checkpoint_integrity import copy_run, source_run  # noqa: F401  (fixture re-used)
from test_train_cli import corpus  # noqa: F401  (fixture re-used)


def reseal(folder: Path) -> Path:
    """Recompute meta.json's record and checksum for the files as they are now (what a crafted one would hold)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["integrity"]["files"] = _records(folder)
    meta["meta_" + HASH_NAME] = _meta_digest(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note: ")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hostile") / "ckpt")


@pytest.fixture
def copy(ckpt, tmp_path) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / "ckpt"))


def generate(folder: Path) -> list[str]:
    return ["generate", "--ckpt", str(folder), "--prompt", "a b", "--max-new-tokens", "2"]


# --- meta.json -------------------------------------------------------------------------------------------------

def strip_record(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "integrity" and not k.startswith("meta_")}


@pytest.mark.parametrize("edit, message", [
    (lambda m: {"step": 40}, "meta.json has no format_version: not written by biglm, or replaced"),
    (strip_record, "meta.json has no integrity record (sizes and checksums), which every format-2 checkpoint"),
    (lambda m: {**m, "integrity": 5}, "meta.json: its integrity record is malformed: damaged"),
    (lambda m: {**m, "files": ["../../outside"]}, "meta.json: 'files' is not a list of the checkpoint's file names"),
    (lambda m: {**m, "format_version": "2"}, "meta.json: format_version '2' is not one biglm writes"),
    (lambda m: {**m, "step": -1}, "meta.json: step -1 is not a step number"),
    (lambda m: {**m, "step": True}, "meta.json: step True is not a step number"),
    (lambda m: {**m, "files": [f for f in m["files"] if f != "model.safetensors"]},
     "model.safetensors is not among the files meta.json lists"),
], ids=["replaced", "record-stripped", "record-malformed", "outside-path", "version-string", "negative-step",
        "bool-step", "weights-unlisted"])
def test_meta_json_without_a_valid_record_is_refused(copy, capsys, edit, message):
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(BiglmError) as err:
        load_model(copy)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert message in one_line_error(capsys, generate(copy))


def test_a_run_skips_a_checkpoint_whose_meta_json_was_replaced(ckpt, tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        shutil.copytree(ckpt, checkpointing.checkpoint_dir(run, step))
    (checkpointing.checkpoint_dir(run, 2) / "meta.json").write_text('{"step": 40}')
    notes: list[str] = []
    assert load_model(run, note=notes.append).path.name == "step_00000001"
    assert len(notes) == 1 and "step_00000002 (meta.json has no format_version" in notes[0], notes


def test_a_format_1_checkpoint_loads_marked_unverified(copy, capsys):
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**strip_record(meta), "format_version": 1}))
    other = Path(shutil.copytree(copy, copy.parent / "other"))
    notes: list[str] = []
    assert load_model(copy, note=notes.append).meta["format_version"] == 1
    assert notes == [f"note: {copy}: checkpoint format 1, written before biglm recorded checksums: its files' "
                     "structure was checked, their contents are unverified"]
    capsys.readouterr()
    assert main(generate(other)) == 0
    assert f"note: {other}: checkpoint format 1" in capsys.readouterr().err


# --- model configs beyond their weights -----------------------------------------------------------------------

def set_config(folder: Path, **fields) -> None:
    text = (folder / "model_config.yaml").read_text()
    lines = [line for line in text.splitlines() if line.split(":")[0] not in fields]
    (folder / "model_config.yaml").write_text("\n".join([*lines, *(f"{k}: {v}" for k, v in fields.items())]) + "\n")


BEYOND = r"model_config.yaml: describes a model of [\d,]+ parameters \(.*\), but model.safetensors holds 78,144"


@pytest.mark.parametrize("fields, message", [
    ({"num_layers": 1_000_000_000_000}, r"model_config.yaml: ModelConfig.num_layers=1,000,000,000,000: more than"),
    ({"num_layers": 4000}, BEYOND),
    ({"hidden_size": 131072, "intermediate_size": 1048576}, BEYOND),
    ({"max_seq_len": 16_000_000, "position_encoding": "learned-2d"}, BEYOND),
])
def test_a_config_far_beyond_its_weights_is_refused_before_building(copy, capsys, fields, message):
    import re

    set_config(copy, **fields)
    reseal(copy)
    with pytest.raises(BiglmError) as err:
        load_model(copy)
    assert re.search(message, str(err.value)), str(err.value)
    assert re.search(message, one_line_error(capsys, generate(copy)))


def test_model_config_bounds_and_memory_are_checked_before_anything_is_built(tmp_path, corpus, capsys):  # noqa: F811
    with pytest.raises(BiglmError, match=r"ModelConfig.num_layers=1,000,000,000,000: more than 4,096"):
        ModelConfig.from_preset("micro", num_layers=10**12)
    with pytest.raises(BiglmError, match=r"ModelConfig.vocab_size=True: must be a positive integer"):
        ModelConfig.from_preset("micro", vocab_size=True)
    # Within the bounds but terabytes of weights: refused before a tensor is allocated.
    from test_train_cli import pretrain

    capsys.readouterr()
    assert pretrain(tmp_path / "run", corpus, "--model.hidden_size", "65536", "--model.intermediate_size",
                    "1048576", "--train.steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "building the model (" in err[0] and "GiB of memory" in err[0], err


@pytest.mark.parametrize("layers, message", [(10**12, "ModelConfig.num_layers=1,000,000,000,000: more than 4,096"),
                                             (4000, "describes a model of 147,972,160 parameters")])
def test_import_hf_of_a_config_far_beyond_its_weights(ckpt, tmp_path, capsys, layers, message):
    hf = export_hf(ckpt, tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "num_layers": layers}))
    line = one_line_error(capsys, ["import-hf", str(hf), "--out", str(tmp_path / "back")])
    assert "config.json" in line and message in line, line
    assert not (tmp_path / "back").exists()


def test_a_safetensors_header_that_lies_is_one_line(copy, capsys):
    data = (copy / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**12]
    body = json.dumps(header).encode()
    (copy / "model.safetensors").write_bytes(len(body).to_bytes(8, "little") + body + data[8 + n:])
    reseal(copy)
    line = one_line_error(capsys, generate(copy))
    assert "model.safetensors: cannot be read, truncated or damaged (tensor" in line and "does not fit" in line, line


def test_model_config_that_is_not_utf8_is_one_line(copy, capsys):
    (copy / "model_config.yaml").write_bytes((copy / "model_config.yaml").read_bytes() + b"name: caf\xe9\n")
    reseal(copy)
    assert "model_config.yaml" in one_line_error(capsys, generate(copy))


# --- tokenizers and pickles ---------------------------------------------------------------------------------

def test_a_garbage_tokenizer_json_names_the_file(copy, ckpt, tmp_path, capsys):
    (copy / "tokenizer" / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": {oops')
    reseal(copy)
    with pytest.raises(BiglmError, match=r"tokenizer/tokenizer.json:1: not valid JSON"):
        load_model(copy)
    assert "tokenizer.json:1: not valid JSON" in one_line_error(capsys, generate(copy))
    hf = export_hf(ckpt, tmp_path / "hf")
    (hf / "tokenizer.json").write_bytes(b"\x00\x01garbage")
    line = one_line_error(capsys, ["import-hf", str(hf), "--out", str(tmp_path / "back")])
    assert f"{hf / 'tokenizer.json'}:1: not valid JSON" in line, line


class Harmful:
    """A pickle that would create a file when loaded without torch's safe loader."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def harmful_pickle(path: Path, marker: Path, zipped: bool = True) -> None:
    evil = Harmful()
    evil.marker = str(marker)
    torch.save({"model.embed_tokens.weight": evil}, path, _use_new_zipfile_serialization=zipped)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_harmful_pickle_is_refused_as_unsafe_not_damaged(ckpt, tmp_path, capsys, zipped):
    hf = export_hf(ckpt, tmp_path / "hf")
    (hf / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    harmful_pickle(hf / "pytorch_model.bin", marker, zipped)
    line = one_line_error(capsys, ["import-hf", str(hf), "--out", str(tmp_path / "back")])
    assert "pytorch_model.bin: refused: not a safe format" in line, line
    assert not marker.exists()
    # A pickle of tensors that is merely cut short is damage, and says so.
    from safetensors.torch import load_file

    state = load_file(str(export_hf(ckpt, tmp_path / "hf2") / "model.safetensors"))
    torch.save(state, hf / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
    data = (hf / "pytorch_model.bin").read_bytes()
    (hf / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    line = one_line_error(capsys, ["import-hf", str(hf), "--out", str(tmp_path / "back")])
    assert "pytorch_model.bin: cannot be read, truncated or damaged" in line, line


def test_resume_from_a_harmful_optimizer_state_is_refused(source_run, tmp_path, capsys):  # noqa: F811
    run = copy_run(source_run, tmp_path / "run")
    newest = checkpointing.checkpoint_dir(run, 8)
    marker = tmp_path / "pwned"
    harmful_pickle(newest / "optimizer.pt", marker)
    reseal(newest)
    line = one_line_error(capsys, ["pretrain", "--out", str(run), "--resume", "--train.steps", "10"])
    assert "optimizer.pt: refused: not a safe format" in line, line
    assert not marker.exists() and not os.path.exists(checkpointing.checkpoint_dir(run, 10))


def test_written_checkpoints_are_format_2_and_verify(tmp_path):
    config = ModelConfig.from_preset("micro")
    from biglm.checkpoint import model_state_dict, verify_checkpoint
    from biglm.model import BiGLM

    folder = write_checkpoint(tmp_path / "c", model_state_dict(BiGLM(config)), config, step=3)
    meta = verify_checkpoint(folder)
    assert meta["format_version"] == 2 and "model.safetensors" in meta["integrity"]["files"]
