"""The recycled-item queue: FIFO, capped pops, a maximum age (counted), requeue, checkpointable."""

from megatron_spark.spark.queue import ItemQueue
from megatron_spark.spark.recycler import Item


def _item(name, step, kind="reflection"):
    choices = ("Yes", "No") if kind == "pointwise" else ()
    label = "Yes" if kind == "pointwise" else "6"
    return Item(kind, f"prompt {name}", label, choices, step, f"uid:{name}", "full", "")


def _names(items):
    return [x.source_uid.removeprefix("uid:") for x in items]


def test_pops_oldest_first_and_caps_at_n():
    q = ItemQueue(max_age_steps=10)
    q.push([_item("a", 0), _item("b", 0)])
    q.push([_item("c", 1)])
    assert len(q) == 3
    assert _names(q.pop(2, step=1)) == ["a", "b"]
    assert _names(q.pop(2, step=1)) == ["c"]
    assert q.pop(2, step=1) == [] and len(q) == 0
    assert q.expired == 0


def test_pop_zero_takes_nothing():
    q = ItemQueue(max_age_steps=10)
    q.push([_item("a", 0)])
    assert q.pop(0, step=0) == [] and len(q) == 1


def test_items_older_than_max_age_are_skipped_and_counted():
    q = ItemQueue(max_age_steps=2)
    q.push([_item("s0", 0), _item("s1", 1), _item("s2", 2), _item("s3", 3)])
    # at step 3: ages 3, 2, 1, 0; age == max_age is still served
    assert _names(q.pop(2, step=3)) == ["s1", "s2"]
    assert q.expired == 1
    assert _names(q.pop(5, step=6)) == []  # s3 is 3 steps old by now
    assert q.expired == 2 and len(q) == 0


def test_expiry_fills_the_pop_from_younger_items():
    q = ItemQueue(max_age_steps=1)
    q.push([_item("old1", 0), _item("old2", 0), _item("new1", 4), _item("new2", 4), _item("new3", 4)])
    assert _names(q.pop(2, step=4)) == ["new1", "new2"]
    assert q.expired == 2
    assert _names(q.pop(2, step=5)) == ["new3"]  # leftovers stay for later steps


def test_leftovers_wait_for_later_steps():
    q = ItemQueue(max_age_steps=4)
    q.push([_item(str(i), 0) for i in range(5)])
    assert _names(q.pop(2, step=0)) == ["0", "1"]
    q.push([_item("5", 1)])
    assert _names(q.pop(2, step=1)) == ["2", "3"]
    assert _names(q.pop(9, step=4)) == ["4", "5"]
    assert q.expired == 0


def test_requeue_puts_items_back_at_the_front_in_order():
    q = ItemQueue(max_age_steps=10)
    q.push([_item(n, 0) for n in "abcde"])
    popped = q.pop(3, step=0)
    assert _names(popped) == ["a", "b", "c"]
    q.requeue(popped[1:])
    assert _names(q.pop(10, step=0)) == ["b", "c", "d", "e"]


def test_state_dict_round_trip_gives_the_same_future_pops():
    q = ItemQueue(max_age_steps=2)
    q.push([_item("p", 0, "pointwise"), _item("r", 0), _item("s", 2), _item("t", 3, "pointwise")])
    q.push([_item("u", 5)])
    assert _names(q.pop(1, step=3)) == ["s"]  # p and r are 3 steps old: expired
    state = q.state_dict()
    restored = ItemQueue(max_age_steps=2)
    restored.load_state_dict(state)
    assert restored.expired == q.expired == 2
    assert len(restored) == len(q) == 2
    for step, n in ((6, 1), (7, 1)):
        assert restored.pop(n, step) == q.pop(n, step)
        assert restored.expired == q.expired
    assert restored.expired == 3  # t is too old at step 6; u (served) is not


def test_state_dict_is_plain_data():
    q = ItemQueue(max_age_steps=1)
    q.push([_item("a", 0, "pointwise")])
    state = q.state_dict()
    assert state == {"items": [_item("a", 0, "pointwise").to_dict()], "expired": 0}
    assert state["items"][0]["choices"] == ["Yes", "No"]
