"""Continuous batching of the token-by-token decoders (``biglm.serve.steppers.autoregressive``): a request's reply
(and its streamed updates) is exactly the one it gets decoding alone (``ChatModel.complete_ids``), whenever it
joins the running batch and whoever it decodes beside (greedy and seeded sampling; causal, bidirectional-ar and
GLM micro models); dropped and failing rows leave without touching the others; the batch does not grow."""

from __future__ import annotations

import time

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.chat import ChatModel, ChatSettings
from biglm.chat.session import Reply, ReplyUpdate
from biglm.data.chat import set_chat_template
from biglm.data.tokenizer import ensure_glm_tokens
from biglm.serve.scheduler import STEPPERS, ReplyRequest, Row, Scheduler
from biglm.serve.steppers.autoregressive import ARStepper, GLMStepper
from instruction_data import instruction_tokenizer

FAMILIES = [("causal", "rope"), ("bidirectional-ar", "rope"), ("glm", "rope-2d"), ("glm", "learned-2d")]
TEXTS = ["find k1", "caps this a b", "please invert the letters d e f g h", "a",
         "now find it k1 = b ; k2 = c", "b c d e f g h i j k l",
         "answer the context k1 = a ; question = k1"]
SETTINGS = [ChatSettings(max_new_tokens=12), ChatSettings(max_new_tokens=9, temperature=0.9, seed=5),
            ChatSettings(max_new_tokens=10, temperature=1.3, top_k=6), ChatSettings(max_new_tokens=3),
            ChatSettings(max_new_tokens=12, temperature=0.7, top_p=0.8, seed=11),
            ChatSettings(max_new_tokens=7, temperature=1.0, seed=5), ChatSettings(max_new_tokens=12)]
STREAMED = [True, False, True, True, False, True, False]
JOINS = {0: [0], 1: [1], 3: [2, 3], 4: [4], 8: [5, 6]}
"""Step -> the requests that join before it: mid-flight, in twos, into a batch that rows have left."""


def micro_chat(family: str, encoding: str) -> ChatModel:
    """A random micro model with sharpened weights (peaked, input-dependent next-token distributions) and a
    larger EOS embedding (some replies stop before ``max_new_tokens``)."""
    torch.manual_seed(0)
    tok = instruction_tokenizer()
    if family == "glm":
        ensure_glm_tokens(tok)
    set_chat_template(tok)
    cfg = ModelConfig("test", max(64, len(tok)), 64, 2, 4, 2, 128, max_seq_len=64, family=family,
                      position_encoding=encoding)
    model = BiGLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10.0)
        model.model.embed_tokens.weight[tok.eos_token_id] *= 1.9 if family != "glm" else 1.3
    return ChatModel(model, tok)


@pytest.fixture(scope="module", params=FAMILIES, ids=[f"{f}-{e}" for f, e in FAMILIES])
def chat(request) -> ChatModel:
    return micro_chat(*request.param)


def prompts(chat: ChatModel) -> list[tuple[list[int], int]]:
    return [chat.prompt_of([{"role": "user", "content": t}], s) for t, s in zip(TEXTS, SETTINGS)]


def alone(chat: ChatModel) -> list[tuple[Reply, list[ReplyUpdate]]]:
    """Each request decoded by itself, as ``biglm chat`` does (its updates as the first row's)."""
    out = []
    for p, s in zip(prompts(chat), SETTINGS):
        seen: list[ReplyUpdate] = []
        out.append((chat.complete_ids([p], s, seen.append)[0], seen))
    return out


def row(chat: ChatModel, i: int) -> Row:
    p, dropped = prompts(chat)[i]
    return Row(i, p, dropped, SETTINGS[i], STREAMED[i])


def run(stepper, chat: ChatModel, joins=JOINS, drop_at: dict[int, list[int]] | None = None, check=None):
    """Step until every row is done; returns replies, updates and errors by key, and the batch sizes seen."""
    replies, updates, errors, sizes = {}, {}, {}, []
    for t in range(200):
        stepper.admit([r if isinstance(r, Row) else row(chat, r) for r in joins.get(t, [])])
        for key in (drop_at or {}).get(t, []):
            stepper.drop(key)
        if not stepper.active and t > max(joins):
            break
        sizes.append(stepper.active)
        for ev in stepper.step():
            if ev.update is not None:
                updates.setdefault(ev.key, []).append(ev.update)
            if ev.reply is not None:
                replies[ev.key] = ev.reply
            if ev.error is not None:
                errors[ev.key] = ev.error
        if check is not None:
            check(stepper)
    return replies, updates, errors, sizes


def test_the_scheduler_uses_them():
    assert STEPPERS["autoregressive"] is ARStepper and STEPPERS["blank-infilling"] is GLMStepper


def test_a_reply_is_the_one_it_gets_alone_whenever_it_joins(chat):
    expected = alone(chat)
    assert len({tuple(r.token_ids) for r, _ in expected}) == len(expected)  # the requests differ
    assert any(r.finished for r, _ in expected) and not all(r.finished for r, _ in expected)  # stops of both kinds
    stepper = STEPPERS[chat.decoder](chat)

    def width_is_the_longest_row(s) -> None:  # rows that left leave no columns behind
        if s.state is not None:
            assert (s.state.document_ids >= 0).any(0).all()

    replies, updates, errors, sizes = run(stepper, chat, check=width_is_the_longest_row)
    assert not errors and max(sizes) >= 3  # rows decoded side by side
    for i, (reply, seen) in enumerate(expected):
        assert replies[i] == reply, f"request {i}"  # ids, text, finished, forward passes, prompt tokens
        assert updates.get(i, []) == (seen if STREAMED[i] else []), f"request {i}"
    assert stepper.active == 0 and stepper.state is None


def test_a_dropped_row_leaves_the_others_as_they_were(chat):
    expected = alone(chat)
    stepper = STEPPERS[chat.decoder](chat)
    # 0 and 2 mid-reply, 5 as it joins (not yet encoded), 99 unknown
    replies, _, errors, _ = run(stepper, chat, drop_at={2: [0], 5: [2], 8: [5, 99]})
    assert not errors and set(replies) == {1, 3, 4, 6}
    for i in replies:
        assert replies[i] == expected[i][0]
    assert stepper.keys() == []


def test_a_row_that_cannot_be_decoded_fails_alone(chat):
    expected = alone(chat)
    bad = Row(7, [], 0, ChatSettings(max_new_tokens=4), False)  # no prompt token: AR refuses it
    if chat.decoder == "blank-infilling":
        bad = Row(7, [5] * 60, 0, ChatSettings(max_new_tokens=4), False)  # too long for a learned-2d table
    stepper = STEPPERS[chat.decoder](chat)
    replies, _, errors, _ = run(stepper, chat, joins={0: [0], 2: [bad, 1]})
    if chat.model.config.position_encoding == "rope-2d":  # RoPE has no table to overflow: it decodes
        assert set(replies) == {0, 1, 7} and not errors
    else:
        assert list(errors) == [7] and "prompt" in errors[7] and set(replies) == {0, 1}
    assert replies[0] == expected[0][0] and replies[1] == expected[1][0]


def test_the_scheduler_streams_and_replies_as_alone_under_staggered_load(chat):
    expected = alone(chat)
    scheduler = Scheduler(chat, max_batch=4, queue_size=16).start()
    try:
        handles = []
        for i, (text, s) in enumerate(zip(TEXTS, SETTINGS)):
            request = ReplyRequest(s, messages=[{"role": "user", "content": text}], stream=STREAMED[i])
            handles.append(scheduler.submit(request))
            time.sleep(0.01 * (i % 3))
        for i, handle in enumerate(handles):
            events = list(handle.events(timeout=60))
            assert events[-1] == expected[i][0]
            assert events[:-1] == (expected[i][1] if STREAMED[i] else [])
        assert all(isinstance(s, STEPPERS[chat.decoder]) for s in scheduler.steppers.values())
        assert scheduler.stats.finished == len(TEXTS) and scheduler.stats.failed == 0
    finally:
        scheduler.stop()
