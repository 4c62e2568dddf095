"""End to end: a micro model trained in the test on a copy task generates the right suffix, through the
token engine, the text API and the ``biglm generate`` command."""

import io

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from biglm import AttentionLayout, BiGLM, BiglmError, ModelConfig
from biglm.checkpoint import model_state_dict, write_checkpoint
from biglm.cli import main
from biglm.generate import generate, generate_ids

PAD, BOS, EOS, MASK, SEP = 0, 1, 2, 3, 4
N = 8  # symbols to copy
SYMBOLS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("ABCDEF")  # ids 8..39
FIRST = 8


def copy_batch(count: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """X = ``BOS s1..sN SEP``, Y = ``s1..sN EOS``."""
    s = torch.randint(FIRST, FIRST + len(SYMBOLS), (count, N), generator=g)
    col = lambda v: torch.full((count, 1), v)
    return torch.cat([col(BOS), s, col(SEP)], 1), torch.cat([s, col(EOS)], 1)


@pytest.fixture(scope="module")
def trained() -> BiGLM:
    """Trained with Y masked at a ratio ~ U(0, 1) (at least one token), prefix-blind, until it copies."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a micro model gains nothing from two threads, and one is steady on a busy machine
    try:
        return _train_copy_model()
    finally:
        torch.set_num_threads(threads)


def _train_copy_model() -> BiGLM:
    torch.manual_seed(0)
    model = BiGLM(ModelConfig.from_preset("micro", vocab_size=64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    B, tx, ty = 32, N + 2, N + 1
    regions = torch.cat([torch.zeros(B, tx), torch.ones(B, ty)], 1).to(torch.int8)
    layout = AttentionLayout("prefix_blind", None, regions)
    avg = None
    for _ in range(300):
        x, y = copy_batch(B, g)
        masked = torch.rand(B, ty, generator=g) < torch.rand(B, 1, generator=g)
        masked[torch.arange(B), torch.randint(0, ty, (B,), generator=g)] = True
        logits_mask = torch.cat([torch.zeros(B, tx, dtype=torch.bool), masked], 1)
        out = model(torch.cat([x, torch.where(masked, MASK, y)], 1), layout, logits_mask=logits_mask)
        loss = F.cross_entropy(out.logits, y[masked])
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg = loss.item() if avg is None else 0.9 * avg + 0.1 * loss.item()
        if avg < 0.1:  # copies perfectly well before this (≈ 80 steps)
            break
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": PAD, "[BOS]": BOS, "[EOS]": EOS, "[MASK]": MASK, "|": SEP, "[UNK]": 5}
    vocab |= {s: FIRST + i for i, s in enumerate(SYMBOLS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   mask_token="[MASK]", unk_token="[UNK]")


@pytest.mark.parametrize(("strategy", "options"), [
    ("mask-predict", {}), ("threshold", {"threshold": 0.9}), ("blocks", {"block_size": 3}),
])
@pytest.mark.slow  # learns: hundreds of steps
def test_trained_model_copies_with_every_strategy(trained, strategy, options):
    x, y = copy_batch(100, torch.Generator().manual_seed(123))
    out = generate_ids(trained, [row[1:].tolist() for row in x], bos_token_id=BOS, eos_token_id=EOS,
                       mask_token_id=MASK, max_new_tokens=N + 1, steps=4, strategy=strategy, **options)
    accuracy = (torch.tensor(out.full_token_ids) == y).float().mean().item()
    assert accuracy >= 0.9, accuracy
    exact = sum(ids == row[:N].tolist() for ids, row in zip(out.token_ids, y))  # EOS cut
    assert exact >= 90, exact


@pytest.mark.slow  # learns: hundreds of steps
def test_text_api_with_trajectory(trained, tokenizer):
    prompts = ["a b c d e f g h |", "z y x w v u t s |"]
    assert generate(trained, prompts, tokenizer, max_new_tokens=N + 1, steps=3) == \
        ["a b c d e f g h", "z y x w v u t s"]
    result = generate(trained, prompts[0], tokenizer, max_new_tokens=N + 1, steps=3, return_trajectory=True)
    assert result.texts == ["a b c d e f g h"] and result.forward_passes == 4
    assert result.steps[0][0] == "▢" * (N + 1) and result.steps[0][-1] == "a b c d e f g h"
    assert len(result.steps[0]) == 4
    assert generate(trained, prompts[0], tokenizer, max_new_tokens=N + 1, steps=3, temperature=0.7, seed=3) == \
        generate(trained, prompts[0], tokenizer, max_new_tokens=N + 1, steps=3, temperature=0.7, seed=3)
    with pytest.raises(BiglmError, match="prompt 0 is empty"):
        generate(trained, "", tokenizer)
    with pytest.raises(BiglmError, match="no tokenizer"):
        generate(trained, "a |")


@pytest.fixture(scope="module")
def checkpoint(trained, tokenizer, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_00000001", model_state_dict(trained),
                            trained.config, tokenizer, step=1)


def test_cli_generates_from_a_checkpoint(checkpoint, capsys, monkeypatch):
    code = main(["generate", "--ckpt", str(checkpoint), "--prompt", "a b c d e f g h |", "--prompt",
                 "q r s |", "--max-new-tokens", "9", "--steps", "3", "--show-steps"])
    out = capsys.readouterr()
    assert code == 0
    assert "=== [0] a b c d e f g h |" in out.out and "\na b c d e f g h\n" in out.out
    assert "step 0: ▢▢▢▢▢▢▢▢▢" in out.out and "forward passes" in out.err
    monkeypatch.setattr("sys.stdin", io.StringIO("h g f e d c b a |\n\n"))
    assert main(["generate", "--ckpt", str(checkpoint), "--prompts-file", "-", "--max-new-tokens", "9",
                 "--steps", "3", "--no-prefix-cache", "--strategy", "threshold"]) == 0
    assert capsys.readouterr().out == "h g f e d c b a\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--prompt", "a |", "--strategy", "beam"], "unknown strategy 'beam'"),
    (["--prompt", "a |", "--steps", "20", "--max-new-tokens", "9"], "steps=20"),
    (["--prompt", "a |", "--length", "predict"], "length head"),
    ([], "no prompt"),
])
def test_cli_bad_input_is_one_line(checkpoint, capsys, args, message):
    assert main(["generate", "--ckpt", str(checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_checkpoint_missing_files_is_one_line(checkpoint, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(BiglmError, match=r"missing model\.safetensors"):
        generate(broken, "a |")
    assert main(["generate", "--ckpt", str(broken), "--prompt", "a |"]) == 2
    assert "missing model.safetensors" in capsys.readouterr().err
