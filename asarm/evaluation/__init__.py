"""The paper's evaluations (docs/design.md, Evaluations) as resumable, shardable commands.

* ``speculative``: sequential vs ASSD vs n-gram draft on packed text (WikiText).
* ``infill_nlp``: ROCStories infilling, ROUGE.
* ``infill_code`` + ``execution``: HumanEval-infilling, functional correctness in isolated processes.
* ``density``: LAMBADA last word and HellaSwag by joint log-likelihood.
* ``quickstart``: offline end to end: tiny training on stdlib sources, then ``speculative``.
* ``runner``: the shared resume/shard/merge machinery; ``metrics``: the numbers; ``sources``: data files.
"""
