"""Sampling-seed purposes: their numbers are part of what recorded runs reproduce."""

from megatron_spark.train.seeds import SeedPurpose


def test_purposes_keep_their_recorded_numbers():
    assert {p.name: int(p) for p in SeedPurpose} == {
        "POLICY_ROLLOUT": 0,
        "ITEM_ROLLOUT": 1,
        "RECYCLE": 2,
        "WARM_START_MIX": 3,
        "OWN_ANSWERS": 4,
    }
