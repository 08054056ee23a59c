"""Problems and tokenizers: where prompts come from and how they become ids.

- ``tasks``: the :class:`~megatron_spark.data.tasks.TaskSource` interface, the synthetic
  arithmetic task and the resumable :class:`~megatron_spark.data.tasks.ProblemSampler`.
- ``datasets``: problems from ``.jsonl`` / ``.parquet`` files, validated row by row up front.
- ``tokenizer``: sentencepiece and Hugging Face tokenizers behind one small protocol.
"""
