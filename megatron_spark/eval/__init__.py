"""Evaluation outputs: a user-supplied reward benchmark (``reward_bench``) and the markdown/PNG report (``report``)."""
