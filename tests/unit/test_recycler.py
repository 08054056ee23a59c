"""Recycling one step's rollouts into judge and reflection items: the rules of the recycler's docstring."""

import random
from dataclasses import replace

import pytest

from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask
from megatron_spark.reward.extract import extract_boxed
from megatron_spark.spark import templates
from megatron_spark.spark.config import SparkConfig
from megatron_spark.spark.recycler import Item, ScoredGroup, recycle

TASK = ArithmeticTask(ArithmeticConfig(min_operands=3, max_operands=3, operators="+-"))
CFG = SparkConfig(enabled=True)
UNBOXED = "I think it is 98765."  # no box: this text and its number must never be shown


def _problem(i):
    return TASK.train_problem(i)


def _right(problem):
    return problem.solution  # e.g. "3+5=8. 8-2=6. \boxed{6}"


def _wrong_answer(problem, k=1):
    return str(int(problem.answer) + k)


def _wrong(problem, k=1):
    return problem.solution.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{_wrong_answer(problem, k)}}}")


def _all_correct(i, n=4):
    p = _problem(i)
    return ScoredGroup(p, [_right(p)] * n, [1.0] * n)


def _all_wrong(i, n=4):
    p = _problem(i)
    return ScoredGroup(p, [_wrong(p, k) for k in range(1, n + 1)], [0.0] * n)


def _mixed(i):
    p = _problem(i)
    return ScoredGroup(p, [_right(p), _wrong(p, 1), _right(p), _wrong(p, 2)], [1.0, 0.0, 1.0, 0.0])


def _run(groups, seed=0, step=7, **overrides):
    return recycle(groups, step, replace(CFG, **overrides), "last", random.Random(seed))


def _kind(items, kind):
    return [x for x in items if x.kind == kind]


def _judge(items):
    return [x for x in items if x.kind in ("pointwise", "pairwise")]


def _pointwise_renderings(problem, answer, vocab):
    return {
        templates.pointwise_prompt(problem.prompt, answer, vocab, t)
        for t in range(templates.NUM_POINTWISE_TEMPLATES)
    }


def _pairwise_renderings(problem, a, b):
    return {
        templates.pairwise_prompt(problem.prompt, a, b, t) for t in range(templates.NUM_PAIRWISE_TEMPLATES)
    }


def test_all_correct_group_gives_a_correct_pointwise_item():
    vocabs = set()
    for seed in range(40):
        group = _all_correct(seed)
        judge = _judge(_run([group], seed=seed, balance_pointwise=False))
        assert len(judge) == 1
        item = judge[0]
        assert item.kind == "pointwise" and item.polarity == "correct"
        yes, no = templates.POINTWISE_VERDICTS[item.variant]
        assert item.choices == (yes, no) and item.label == yes
        assert item.prompt in _pointwise_renderings(group.problem, group.problem.answer, item.variant)
        vocabs.add(item.variant)
    assert vocabs == {"yesno", "ab"}  # both verdict vocabularies are drawn


def test_all_wrong_group_shows_a_boxed_wrong_answer():
    for seed in range(40):
        p = _problem(seed)
        group = ScoredGroup(p, [UNBOXED, _wrong(p, 3), UNBOXED], [0.0, 0.0, 0.0])
        judge = _judge(_run([group], seed=seed, balance_pointwise=False))
        assert len(judge) == 1
        item = judge[0]
        assert item.kind == "pointwise" and item.polarity == "incorrect"
        yes, no = templates.POINTWISE_VERDICTS[item.variant]
        assert item.label == no
        assert item.prompt in _pointwise_renderings(p, _wrong_answer(p, 3), item.variant)


def test_all_wrong_without_any_box_gives_no_item():
    p = _problem(0)
    group = ScoredGroup(p, [UNBOXED, "no idea", "\\boxed{}"], [0.0, 0.0, 0.0])
    assert _run([group], balance_pointwise=False) == []  # neither a judge nor a reflection item


def test_mixed_group_pairwise_puts_the_correct_answer_in_the_label_slot():
    slots = []
    for seed in range(200):
        group = _mixed(seed)
        p = group.problem
        judge = _judge(_run([group], seed=seed, pairwise_fraction=1.0))
        assert len(judge) == 1
        item = judge[0]
        assert item.kind == "pairwise" and item.choices == ("A", "B") and item.variant == "ab"
        wrongs = [_wrong_answer(p, 1), _wrong_answer(p, 2)]
        if item.label == "A":
            rendered = set().union(*(_pairwise_renderings(p, p.answer, w) for w in wrongs))
        else:
            assert item.label == "B"
            rendered = set().union(*(_pairwise_renderings(p, w, p.answer) for w in wrongs))
        assert item.prompt in rendered
        slots.append(item.label)
    assert 0.35 <= slots.count("A") / len(slots) <= 0.65  # the correct slot is drawn at random


def test_mixed_group_pointwise_when_pairwise_fraction_is_zero():
    polarities = set()
    for seed in range(40):
        group = _mixed(seed)
        p = group.problem
        judge = _judge(_run([group], seed=seed, pairwise_fraction=0.0, balance_pointwise=False))
        assert len(judge) == 1
        item = judge[0]
        assert item.kind == "pointwise"
        yes, no = templates.POINTWISE_VERDICTS[item.variant]
        if item.polarity == "correct":
            assert item.label == yes
            assert item.prompt in _pointwise_renderings(p, p.answer, item.variant)
        else:
            assert item.label == no
            shown = _pointwise_renderings(p, _wrong_answer(p, 1), item.variant)
            shown |= _pointwise_renderings(p, _wrong_answer(p, 2), item.variant)
            assert item.prompt in shown
        polarities.add(item.polarity)
    assert polarities == {"correct", "incorrect"}


def test_mixed_pointwise_takes_the_polarity_the_step_has_fewer_of():
    groups = [_mixed(i) for i in range(21)]
    items = _run(groups, pairwise_fraction=0.0, balance_pointwise=False, max_judge_items_per_step=100)
    pointwise = _kind(items, "pointwise")
    assert len(pointwise) == 21
    correct = sum(x.polarity == "correct" for x in pointwise)
    assert abs(correct - (21 - correct)) == 1
    groups = [_all_correct(i) for i in range(5)] + [_mixed(i) for i in range(5, 10)]
    items = _run(groups, pairwise_fraction=0.0, balance_pointwise=False, max_judge_items_per_step=100)
    order = {g.problem.uid: i for i, g in enumerate(groups)}  # items come back shuffled
    in_group_order = sorted(_kind(items, "pointwise"), key=lambda x: order[x.source_uid])
    assert [x.polarity for x in in_group_order] == ["correct"] * 5 + ["incorrect"] * 5


def test_unboxed_answers_are_never_shown():
    for seed in range(60):
        p = _problem(seed)
        groups = [
            ScoredGroup(p, [UNBOXED, _right(p), UNBOXED, _wrong(p)], [0.0, 1.0, 0.0, 0.0]),
            ScoredGroup(_problem(seed + 1000), [UNBOXED, _wrong(_problem(seed + 1000))], [0.0, 0.0]),
            ScoredGroup(_problem(seed + 2000), [UNBOXED, _right(_problem(seed + 2000))], [1.0, 1.0]),
        ]
        items = _run(groups, seed=seed, balance_pointwise=False)
        assert len(_kind(items, "reflection")) == 2 and len(_judge(items)) == 3
        for item in items:
            assert "98765" not in item.prompt


def test_reflection_items_come_from_wrong_responses_only():
    shows = set()
    for seed in range(60):
        p = _problem(seed)
        right, wrong = _right(p), _wrong(p, 5)
        group = ScoredGroup(p, [right, wrong, right], [1.0, 0.0, 1.0])
        reflection = _kind(_run([group], seed=seed), "reflection")
        assert len(reflection) == 1
        item = reflection[0]
        assert item.label == p.answer and item.choices == ()
        attempt = wrong if item.variant == "full" else _wrong_answer(p, 5)
        rendered = {
            templates.reflection_prompt(p.prompt, attempt, item.variant, tone, t)
            for tone in ("neutral", "wrong")
            for t in range(templates.NUM_REFLECTION_TEMPLATES)
        }
        assert item.prompt in rendered
        shows.add(item.variant)
    assert shows == {"full", "answer"}
    assert _kind(_run([_all_correct(i) for i in range(10)]), "reflection") == []


def test_enable_flags_remove_their_kind():
    groups = [_all_correct(i) for i in range(8)] + [_all_wrong(i) for i in range(8, 16)]
    groups += [_mixed(i) for i in range(16, 40)]
    everything = _run(groups)
    assert {x.kind for x in everything} == {"pointwise", "pairwise", "reflection"}

    no_pointwise = _run(groups, pointwise=False)
    assert {x.kind for x in no_pointwise} == {"pairwise", "reflection"}
    assert {x.source_uid for x in _judge(no_pointwise)} <= {g.problem.uid for g in groups[16:]}
    assert len(_judge(no_pointwise)) == min(24, CFG.max_judge_items_per_step)  # every mixed group

    assert {x.kind for x in _run(groups, pairwise=False)} == {"pointwise", "reflection"}
    assert {x.kind for x in _run(groups, reflection=False)} == {"pointwise", "pairwise"}


def test_without_pointwise_uniform_groups_give_no_judge_item():
    groups = [_all_correct(i) for i in range(5)] + [_all_wrong(i) for i in range(5, 10)]
    assert _judge(_run(groups, pointwise=False)) == []


def test_caps_are_respected():
    groups = [_all_correct(i) for i in range(20)] + [_all_wrong(i) for i in range(20, 40)]
    groups += [_mixed(i) for i in range(40, 80)]
    items = _run(groups, max_judge_items_per_step=5, max_reflection_items_per_step=3)
    assert len(_judge(items)) <= 5
    assert len(_kind(items, "reflection")) == 3
    assert _run(groups, max_judge_items_per_step=0, max_reflection_items_per_step=0) == []


def test_balance_pointwise_equalises_labels():
    groups = [_all_correct(i) for i in range(20)] + [_all_wrong(i) for i in range(20, 23)]
    for seed in range(10):
        pointwise = _kind(_run(groups, seed=seed), "pointwise")
        assert sum(x.polarity == "correct" for x in pointwise) == 3
        assert sum(x.polarity == "incorrect" for x in pointwise) == 3
    assert _kind(_run([_all_correct(0)]), "pointwise") == []  # a lone label is balanced away
    unbalanced = _kind(_run(groups, balance_pointwise=False), "pointwise")
    assert sum(x.polarity == "correct" for x in unbalanced) == 20
    assert sum(x.polarity == "incorrect" for x in unbalanced) == 3


def test_judge_cap_keeps_the_balance():
    groups = [_all_correct(i) for i in range(30)] + [_all_wrong(i) for i in range(30, 50)]
    groups += [_mixed(i) for i in range(50, 60)]
    for cap in (1, 4, 7, 13):
        for seed in range(5):
            judge = _judge(_run(groups, seed=seed, max_judge_items_per_step=cap))
            assert len(judge) <= cap
            pointwise = _kind(judge, "pointwise")
            correct = sum(x.polarity == "correct" for x in pointwise)
            assert correct == len(pointwise) - correct


def test_at_most_one_judge_and_one_reflection_item_per_group():
    groups = [_all_correct(i) for i in range(10)] + [_all_wrong(i) for i in range(10, 20)]
    groups += [_mixed(i) for i in range(20, 40)]
    items = _run(
        groups, balance_pointwise=False, max_judge_items_per_step=100, max_reflection_items_per_step=100
    )
    judge_uids = [x.source_uid for x in _judge(items)]
    reflection_uids = [x.source_uid for x in _kind(items, "reflection")]
    assert len(judge_uids) == len(set(judge_uids)) == 40
    assert len(reflection_uids) == len(set(reflection_uids)) == 30  # every group with a wrong answer


def test_same_seed_same_items_other_seed_other_choices():
    groups = [_all_correct(i) for i in range(5)] + [_all_wrong(i) for i in range(5, 10)]
    groups += [_mixed(i) for i in range(10, 30)]
    assert _run(groups, seed=3) == _run(groups, seed=3)
    assert _run(groups, seed=3) != _run(groups, seed=4)


def test_items_carry_step_and_source():
    groups = [_all_correct(0), _all_wrong(1), _mixed(2)]
    items = _run(groups, step=42, balance_pointwise=False)
    assert items
    for item in items:
        assert item.step == 42
        assert item.source_uid in {g.problem.uid for g in groups}
    assert {x.source_uid for x in _kind(items, "reflection")} == {
        groups[1].problem.uid,
        groups[2].problem.uid,
    }


def test_item_dict_round_trip():
    groups = [_all_correct(0), _all_wrong(1), _mixed(2)]
    items = _run(groups, balance_pointwise=False)
    assert {x.kind for x in items} >= {"pointwise", "reflection"}
    for item in items:
        d = item.to_dict()
        assert isinstance(d["choices"], list)
        assert Item.from_dict(d) == item


def test_mismatched_lengths_raise():
    p = _problem(0)
    with pytest.raises(ValueError, match="2 responses, 3 rewards"):
        _run([ScoredGroup(p, [_right(p), _wrong(p)], [1.0, 0.0, 0.0])])


def test_judge_items_carry_the_tasks_worked_check_of_what_they_show():
    from megatron_spark.spark.checks import ArithmeticChecks

    checks = ArithmeticChecks()
    groups = [_all_correct(0), _all_wrong(1), _mixed(2), _mixed(3), _mixed(4)]
    cfg = replace(CFG, balance_pointwise=False)
    plain = recycle(groups, 7, cfg, "last", random.Random(0))
    with_checks = recycle(groups, 7, cfg, "last", random.Random(0), reasoning=checks.reasoning)
    # the checks take no random draws: the same items, the check added
    assert [replace(x, check="") for x in with_checks] == plain
    assert all(x.check == "" for x in plain)
    by_uid = {g.problem.uid: g for g in groups}
    judge = _judge(with_checks)
    assert {x.kind for x in judge} == {"pointwise", "pairwise"}
    for item in judge:
        group = by_uid[item.source_uid]
        finals = sorted({extract_boxed(r, "last") for r in group.responses})
        shown = (
            [[f] for f in finals]
            if item.kind == "pointwise"
            else [[a, b] for a in finals for b in finals if a != b]
        )
        # the check is the one of the answer(s) the item shows: the right one where its label says
        fits = [c for c in shown if checks.reasoning(group.problem, c) == item.check]
        assert item.check and fits
        right = group.problem.answer
        if item.kind == "pointwise":
            assert all((c[0] == right) == (item.polarity == "correct") for c in fits)
        else:
            assert all(c["AB".index(item.label)] == right for c in fits)
    for item in _kind(with_checks, "reflection"):
        assert item.check == ""


def test_an_answer_without_a_worked_check_gives_an_item_with_an_empty_check():
    """Policy answers can be anything: an arithmetic answer that is not an integer has no check
    step, and recycling must not fail on it (the item is then paid for its verdict alone)."""
    from megatron_spark.spark.checks import ArithmeticChecks

    p = _problem(0)
    odd = [
        p.solution.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{bad}}}") for bad in ("x+1", "1/2", "3.5", "")
    ]
    group = ScoredGroup(p, odd, [0.0] * len(odd))
    cfg = replace(CFG, reflection=False, balance_pointwise=False)
    items = recycle([group], 0, cfg, "last", random.Random(0), reasoning=ArithmeticChecks().reasoning)
    (item,) = items
    assert item.kind == "pointwise" and item.polarity == "incorrect" and item.check == ""
