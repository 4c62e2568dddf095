"""Continuous Mask-Predict (``MaskedStepper``): a request's reply and live passes are exactly those it gets
decoded alone, whether it decodes alone or joins a running batch mid-flight (greedy and seeded sampling, any
strategy, length mode and prompt length, with or without the prefix cache); a dropped row leaves at once; a row
that cannot start fails alone; the scheduler puts rows of every setting in the one stepper."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.chat import ChatModel, ChatSettings
from biglm.data.chat import set_chat_template
from biglm.serve.scheduler import STEPPERS, ReplyRequest, Row, Scheduler
from biglm.serve.steppers.masked import MaskedStepper
from instruction_data import instruction_tokenizer

REQUESTS = [  # (user message, settings, streamed)
    ("reverse this a b c d e f", ChatSettings(max_new_tokens=8, steps=6, length="fixed"), True),
    ("a", ChatSettings(max_new_tokens=8, steps=5, temperature=0.9, seed=3, strategy="threshold"), True),
    ("copy b c", ChatSettings(max_new_tokens=6, steps=3, strategy="blocks", temperature=0.7, top_k=5, seed=9,
                              length_candidates=2), True),
    ("upper a b c d e f g h i j", ChatSettings(max_new_tokens=8, steps=8, temperature=1.0, top_p=0.9, seed=11), False),
    ("a b", ChatSettings(max_new_tokens=3, steps=2, length="fixed", system_prompt="copy"), True),
    # Same sampling settings and seed: each row draws from its own generator, not one shared by the batch.
    ("copy a b c", ChatSettings(max_new_tokens=6, steps=4, temperature=0.8, seed=5, length="fixed"), False),
    ("reverse d e f g", ChatSettings(max_new_tokens=6, steps=4, temperature=0.8, seed=5, length="fixed"), False),
]
JOINS = {0: [0, 1], 2: [2], 3: [3, 4, 5, 6]}
"""Step number -> the requests admitted before it."""


@pytest.fixture(scope="module")
def chat() -> ChatModel:
    """A random masked model with a length head, its weights scaled so that greedy choices are not near-ties."""
    torch.manual_seed(0)
    tok = instruction_tokenizer()
    set_chat_template(tok)
    cfg = ModelConfig("test", max(64, len(tok)), 32, 1, 4, 2, 64, max_seq_len=64, length_head=True,
                      max_target_length=9)
    model = BiGLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(6.0)
    return ChatModel(model, tok)


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def row(chat: ChatModel, key: int) -> Row:
    text, settings, stream = REQUESTS[key]
    ids, dropped = chat.prompt_of(messages(text), settings)
    return Row(key, ids, dropped, settings, stream)


def alone(chat: ChatModel, key: int) -> tuple[object, list]:
    """The reply and live passes of request ``key`` decoded by itself (``ChatModel.complete_ids``)."""
    r, updates = row(chat, key), []
    reply = chat.complete_ids([(r.prompt, r.dropped)], r.settings, updates.append if r.stream else None)[0]
    return reply, updates


def run_stepper(stepper: MaskedStepper, chat: ChatModel, joins: dict[int, list[int]],
                drops: dict[int, list[int]] | None = None) -> tuple[dict, dict, list[list[int]]]:
    """Replies and updates per key, and the pass counters of the rows sharing each step."""
    replies, updates, shared = {}, {}, []
    t = 0
    while stepper.active or any(s >= t for s in joins):
        stepper.admit([row(chat, k) for k in joins.get(t, [])])
        for k in (drops or {}).get(t, []):
            stepper.drop(k)
        shared.append([job.passes for job in stepper.batch.jobs.values() if not job.done])
        for ev in stepper.step():
            assert ev.error is None, ev.error
            if ev.update is not None:
                updates.setdefault(ev.key, []).append(ev.update)
            if ev.reply is not None:
                replies[ev.key] = ev.reply
        t += 1
    return replies, updates, shared


@pytest.mark.parametrize("cache", [True, False], ids=["prefix-cache", "re-encoded"])
def test_a_reply_is_the_same_alone_or_joining_mid_flight(chat, cache):
    replies, updates, shared = run_stepper(MaskedStepper(chat, prefix_cache=cache), chat, JOINS)
    assert any(len(set(passes)) >= 3 for passes in shared)  # rows at three different passes shared one
    assert len({len(row(chat, k).prompt) for k in range(len(REQUESTS))}) >= 5  # prompts of different lengths
    for key in range(len(REQUESTS)):
        reply, passes = alone(chat, key)
        if not cache:  # no prefix pass (but the length head's)
            fixed = chat.masked_decoding(REQUESTS[key][1])["length"] == "fixed"
            reply = dataclasses.replace(reply, forward_passes=reply.forward_passes - fixed)
        assert replies[key] == reply, key
        assert updates.get(key, []) == passes, key
        assert [u.index for u in passes] == list(range(len(passes))) and (passes or not REQUESTS[key][2])


def test_each_request_alone_in_the_stepper_is_complete_ids(chat):
    for key in range(len(REQUESTS)):
        replies, updates, _ = run_stepper(MaskedStepper(chat), chat, {0: [key]})
        reply, passes = alone(chat, key)
        assert replies[key] == reply and updates.get(key, []) == passes


def test_a_dropped_row_leaves_at_once_and_the_others_are_unchanged(chat):
    stepper = MaskedStepper(chat)
    replies, updates, _ = run_stepper(stepper, chat, {0: [0, 1, 3]}, drops={2: [1]})
    assert 1 not in replies and len(updates[1]) == 2  # two passes, then gone
    assert stepper.keys() == [] and stepper.batch.jobs == {}
    for key in (0, 3):
        assert replies[key] == alone(chat, key)[0]
    stepper.admit([row(chat, 0), row(chat, 1)])
    stepper.drop(0)
    assert stepper.keys() == [1] and stepper.active == 1 and list(stepper.batch.jobs) == [1]


def test_a_row_that_cannot_start_fails_alone(chat):
    stepper = MaskedStepper(chat)
    bad = dataclasses.replace(row(chat, 0), key=7, settings=ChatSettings(strategy="nope"))
    stepper.admit([row(chat, 0), bad])
    assert sorted(stepper.keys()) == [0, 7] and stepper.active == 2
    events = stepper.step()
    errors = [e for e in events if e.error is not None]
    assert [(e.key, e.error) for e in errors] == [(7, "unknown strategy 'nope': expected one of mask-predict, "
                                                       "threshold, blocks")]
    assert stepper.keys() == [0]
    while stepper.active:
        events += stepper.step()
    assert [e.reply for e in events if e.reply is not None] == [alone(chat, 0)[0]]


def test_the_scheduler_decodes_every_setting_in_one_stepper_with_the_replies_alone(chat):
    assert STEPPERS["mask-predict"] is MaskedStepper
    sched = Scheduler(chat, max_batch=8)
    handles = []
    for key in (5, 6):  # waiting together when the worker starts: admitted in the same tick
        text, settings, stream = REQUESTS[key]
        handles.append(sched.submit(ReplyRequest(settings, messages=messages(text), stream=stream)))
    sched.start()
    try:
        for text, settings, stream in REQUESTS[:5]:
            handles.append(sched.submit(ReplyRequest(settings, messages=messages(text), stream=stream)))
            if stream:  # the next request joins once this one has started decoding
                next(handles[-1].events(timeout=60))
            steppers = list(sched.steppers.values())  # (the worker may change the dict meanwhile)
            assert len(steppers) <= 1 and all(isinstance(s, MaskedStepper) for s in steppers)
        for key, handle in zip((5, 6, 0, 1, 2, 3, 4), handles):
            got = list(handle.events(timeout=60))
            reply, passes = alone(chat, key)
            assert got[-1] == reply, key
            if REQUESTS[key][2]:
                assert got[:-1] == passes[1:], key  # the first pass's update was read above
    finally:
        sched.stop()
