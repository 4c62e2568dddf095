"""Dataset builders: the small real-text sets the demo, the benches and the tests fine-tune on, and the
paper's generation set, each a ``python -m`` command or a function.

- ``make_titles``: name a Wikipedia article from its first sentence (seq2seq and extractive QA), with the
  lead-k baseline, from the documents a pre-training run trained on / held out (``biglm.data.held_out``);
- ``make_instructions``: FLAN-style and multi-turn instructions answered from the same summaries;
- ``make_wordtasks``: copy / reversal of real words and a "contains a number" cloze set;
- ``genset``: ``build_genset`` samples the paper's Genset (§4.3) from the hub (scored by
  ``biglm.finetune.genset.evaluate_generation``, ``biglm evaluate --generation``).
"""
