"""``instruction``: instruction tuning and chat as the seq2seq task over chat data (paper §4.3; BatGPT §3.2).

Records (FLAN-style ``instruction``/``input``/``output`` or ``messages`` lists; ``biglm.data.chat``) become
conversations; each target assistant turn becomes one ``Seq2SeqExample`` whose source X is the history
rendered by the chat template (stored with the tokenizer, so checkpoints and exported folders carry it) and
whose target Y is the reply. Training, decoding and scoring are the seq2seq kind's: BiGLM masks Y
uniformly with X observed (length head or EOS padding); causal and bidirectional-ar models read
``BOS X Y EOS`` left to right with the loss on Y and EOS only.

A history longer than the model keeps its latest turns: the oldest user/assistant turns are dropped (a
system message stays), and a last turn still too long keeps its last tokens; one note per file says how
many examples were cut. ``mixture`` mixes several sets by weight (``biglm.finetune.config.InstructionConfig``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from biglm.data.chat import (
    ChatFields,
    check_messages,
    fit_history,
    record_messages,
    reply_text,
    set_chat_template,
    turn_pairs,
)
from biglm.data.records import Record, read_records
from biglm.errors import BiglmError
from biglm.finetune.tasks.seq2seq import Seq2SeqExample, Seq2SeqTask


class InstructionTask(Seq2SeqTask):
    kind = "instruction"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        o = self.options
        if o.chat_template == "tokenizer":
            if not getattr(self.tokenizer, "chat_template", None):
                raise BiglmError("task.instruction.chat_template=tokenizer: the tokenizer has no chat template")
        else:
            set_chat_template(self.tokenizer, o.chat_template or None)
        self.names = ChatFields(o.messages_field, o.instruction_field, o.input_field, o.output_field, o.system_field)
        self.mixture = list(o.mixture)

    def conversation(self, record: Record) -> list[dict[str, str]]:
        """The checked conversation of ``record`` (one-line errors naming its line)."""
        o = self.options
        return record_messages(record.fields, record.where, self.names, o.format, o.system_prompt)

    def encode(self, records: Sequence[Record], labelled: bool = True) -> list[Seq2SeqExample]:
        convs = [self.conversation(r) if labelled else self._prompt_only(r) for r in records]
        pairs = [(k, i) for k, conv in enumerate(convs) for i in (turn_pairs(conv, self.options.all_turns)
                                                                  if labelled else [len(conv)])]
        sources, dropped_turns, cut_sources = [], 0, 0
        for k, i in pairs:
            ids, dropped, cut = fit_history(self.tokenizer, convs[k][:i], self.max_source)
            sources.append(ids)
            dropped_turns += dropped
            cut_sources += cut
        targets: list[list[int] | None] = [None] * len(pairs)
        texts: list[str | None] = [None] * len(pairs)
        if labelled:
            texts = [convs[k][i]["content"] for k, i in pairs]
            targets = self.tokenize([reply_text(self.tokenizer, convs[k], i) for k, i in pairs])
        out, cut_targets = [], 0
        for n, ((k, i), src, tgt) in enumerate(zip(pairs, sources, targets)):
            record = records[k]
            if tgt is not None and len(tgt) > self.max_target:
                if not self.options.truncate_targets:
                    raise BiglmError(f"{record.where}: reply of {len(tgt)} tokens exceeds task.instruction."
                                     f"max_target_length={self.max_target} (raise it, or set truncate_targets true)")
                tgt, cut_targets = tgt[:self.max_target], cut_targets + 1
            turn = f"-{i}" if self.options.all_turns and labelled else ""
            out.append(Seq2SeqExample(self.example_id(record, k) + turn, src, tgt, texts[n], record.where))
        if cut_sources or cut_targets:
            where = records[0].where.rsplit(":", 1)[0].split(" item ")[0].split(" row ")[0]
            parts = []
            if cut_sources:
                parts.append(f"{cut_sources} prompt(s) longer than {self.max_source} tokens (max_seq_len "
                             f"{self.max_seq_len} - BOS - max_target_length {self.max_target}) kept their latest turns "
                             f"({dropped_turns} oldest turn(s) dropped, a system message kept; a last turn still too "
                             "long keeps its end)")
            if cut_targets:
                parts.append(f"{cut_targets} reply(ies) kept their first {self.max_target} tokens")
            print(f"note: {where}: {'; '.join(parts)}", file=sys.stderr)
        return out

    def _prompt_only(self, record: Record) -> list[dict[str, str]]:
        """A conversation to answer (``biglm predict``): messages ending in a user turn, or a FLAN record
        without its output."""
        o, f = self.options, record.fields
        if self.names.messages in f and o.format != "flan":
            messages = check_messages(f[self.names.messages], record.where, need_reply=False)
            if messages[-1]["role"] == "assistant":
                messages = messages[:-1]  # answer the last user turn again
        else:
            filled = {**f, self.names.output: f.get(self.names.output) or "-"}
            messages = record_messages(filled, record.where, self.names, "flan")[:-1]
        if o.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": o.system_prompt}, *messages]
        return messages

    def read_mixture(self, limit: int = 0) -> list[Seq2SeqExample]:
        """The training examples of ``mixture``: each set's share of the epoch is its weight's share of the
        total (drawn in a seeded order within the set; a set smaller than its share repeats)."""
        sets = []
        for part in self.mixture:
            records = read_records(part["path"], split=part.get("split", "train"), hf_config=part.get("config"),
                                   limit=limit)
            sets.append((float(part.get("weight", 1.0)), self.encode(records)))
        total = sum(len(examples) for _, examples in sets)
        weights = sum(w for w, _ in sets)
        out: list[Seq2SeqExample] = []
        g = torch.Generator().manual_seed(self.cfg.train.seed)
        for w, examples in sets:
            share = max(1, round(total * w / weights))
            order: list[int] = []
            while len(order) < share:
                order += torch.randperm(len(examples), generator=g).tolist()
            out += [examples[j] for j in order[:share]]
        parts = ", ".join(f"{p['path']} {len(ex)} -> {max(1, round(total * w / weights))}"
                          for p, (w, ex) in zip(self.mixture, sets))
        print(f"note: instruction mixture ({parts} examples per epoch)", file=sys.stderr)
        return out


__all__ = ["InstructionTask"]
