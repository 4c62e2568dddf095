"""Suffix caches for block decoding: ``prefix`` is the exact computation it always was; ``blocks`` and ``dual``
run less of Y, equal ``prefix`` when refreshed every pass, and their cached pass is exact while nothing changed."""

import pytest
import torch

from biglm import BiGLM, BiglmError
from biglm.generate import DecodeJob, PassBatch, encode_prefix, generate_ids
from biglm.generate.suffix_cache import BlockCache
from test_generate import sharp_micro

BOS, EOS, MASK = 1, 2, 3
IDS = dict(bos_token_id=BOS, eos_token_id=EOS, mask_token_id=MASK)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [14, 15], [20, 21, 22, 23, 24]]  # ragged on purpose
RULES = [dict(), dict(commit="threshold", threshold=0.2), dict(commit="factor", factor=1.5),
         dict(commit="margin", margin=0.1)]


@pytest.fixture(scope="module")
def model() -> BiGLM:
    return sharp_micro(length_head=True, max_target_length=16)


class SuffixWidths:
    """Records the width of every suffix pass (calls after the prompt's)."""

    def __init__(self, model: BiGLM) -> None:
        self.widths: list[int] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if kwargs.get("past") is not None:
            self.widths.append(args[0].shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def run(model, **kw):
    base = dict(max_new_tokens=12, steps=12, strategy="blocks", block_size=4)
    if kw.get("strategy", "blocks") != "blocks":
        del base["block_size"]
    return generate_ids(model, PROMPTS, **IDS, **{**base, **kw})


def same(a, b) -> None:
    assert a.full_token_ids == b.full_token_ids
    assert a.scores == b.scores
    assert a.forward_passes == b.forward_passes


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.get("commit", "mask-predict"))
def test_prefix_mode_is_the_exact_full_recompute(model, rule):
    default = run(model, **rule)
    same(run(model, cache="prefix", **rule), default)
    recompute = run(model, prefix_cache=False, **rule)  # the prompt re-encoded with Y at every pass
    assert recompute.full_token_ids == default.full_token_ids
    for a, b in zip(recompute.scores, default.scores):
        assert a == pytest.approx(b, abs=1e-5)
    with SuffixWidths(model) as hook:
        run(model, cache="prefix", **rule)
    assert hook.widths and set(hook.widths) == {12}  # every pass runs all of Y


@pytest.mark.parametrize("mode", ["blocks", "dual"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.get("commit", "mask-predict"))
def test_approximate_modes_refreshed_every_pass_equal_prefix(model, mode, rule):
    same(run(model, cache=mode, refresh=1, **rule), run(model, cache="prefix", **rule))


@pytest.mark.parametrize("mode", ["blocks", "dual"])
def test_one_pass_per_block_is_exact_without_refresh(model, mode):
    # every pass is a block's first: all of them run all of Y
    same(run(model, cache=mode, steps=3), run(model, cache="prefix", steps=3))


@pytest.mark.parametrize("mode,later", [("blocks", [12, 12, 12, 8, 8, 8, 4, 4, 4]), ("dual", [12, 4, 4] * 3)])
def test_approximate_modes_run_only_what_they_do_not_cache(model, mode, later):
    with SuffixWidths(model) as hook:
        out = run(model, cache=mode, steps=9)  # 3 blocks of 4, 3 passes each
    first_of_block = [12, None, None] * 3
    assert [w if f is None else f for w, f in zip(later, first_of_block)] == hook.widths
    assert out.forward_passes == 1 + 9
    with SuffixWidths(model) as hook:
        run(model, cache=mode, steps=9, refresh=2)
    assert hook.widths == [12, later[1], 12, 12, later[4], 12, 12, later[7], 12]


@pytest.mark.parametrize("keep_later", [False, True])
def test_cached_pass_is_exact_while_nothing_changed(model, keep_later):
    """Between two passes with the same tokens, the kept keys and values are current: the cached pass gives the
    logits the full pass gave (ragged prompts, a shorter candidate row, a block in the middle)."""
    prefix = encode_prefix(model, [[BOS, *p] for p in PROMPTS])
    torch.manual_seed(1)
    tokens = torch.randint(4, 64, (3, 12))
    tokens[:, 4:] = MASK
    active = torch.ones(3, 12, dtype=torch.bool)
    active[1, 10:] = False
    where = torch.zeros(3, 12, dtype=torch.bool)
    where[:, 4:8] = True
    where &= active
    cache = BlockCache(keep_later=keep_later)
    with torch.inference_mode():
        full = cache(model, prefix, tokens, active, where, (4, 8))
        cached = cache(model, prefix, tokens, active, where, (4, 8))
    assert cache.full_passes == 1
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


def test_length_candidates_and_passes_shared_with_exact_jobs(model):
    """A dual-cache job decodes with length candidates, and in a PassBatch beside exact jobs it gives what it
    gives alone (it runs its own passes); the exact jobs are unaffected."""
    settings = [dict(strategy="blocks", block_size=4, cache="dual", commit="threshold", threshold=0.3),
                dict(strategy="mask-predict"), dict(strategy="blocks", block_size=4)]
    common = dict(**IDS, max_new_tokens=12, steps=9, length="predict", length_candidates_k=2)
    alone = [generate_ids(model, [p], **common, **s) for p, s in zip(PROMPTS, settings)]
    assert all(len(o.candidates[0]) == 2 and o.lengths[0] in o.candidates[0] for o in alone)
    batch = PassBatch(model)
    for i, (p, s) in enumerate(zip(PROMPTS, settings)):
        batch.add(i, DecodeJob(model, p, **common, **s))
    while not all(j.done for j in batch.jobs.values()):
        batch.step()
    for i, out in enumerate(alone):
        got = batch.jobs[i].output()
        assert got.full_token_ids == out.full_token_ids
        assert got.scores == pytest.approx(out.scores, abs=1e-5)


@pytest.mark.parametrize("kw,message", [
    (dict(strategy="mask-predict", cache="dual"), "cache='dual' caches blocks: it needs strategy 'blocks'"),
    (dict(cache="both"), "unknown cache 'both'"),
    (dict(cache="dual", prefix_cache=False), "cache='dual' needs the prompt's cache"),
    (dict(cache="blocks", refresh=-1), "refresh=-1: must be an integer >= 0"),
    (dict(refresh=2), "refresh=2 is for the approximate caches"),
])
def test_cache_options_are_checked_in_one_line(model, kw, message):
    with pytest.raises(BiglmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(model, **kw)
