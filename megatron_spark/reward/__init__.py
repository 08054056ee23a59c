"""Rewards: read the answer out of a response and check it against the ground truth.

- ``extract``: the content of ``\\boxed{...}``.
- ``verifiers``: math-verify, exact, multiple-choice and user-function verifiers, each under a
  wall-clock limit (``timeout``).
"""
