"""tools/judge_probe.py reads a judge reply's check steps against the prompt it answers."""

from types import SimpleNamespace

from megatron_spark.spark import templates
from megatron_spark.spark.recycler import Item
from tools.judge_probe import probe


def _pairwise(a: str, b: str, label: str, template: int) -> SimpleNamespace:
    prompt = templates.pairwise_prompt("Compute 3+5-2.", a, b, template)
    return SimpleNamespace(item=Item("pairwise", prompt, label, ("A", "B"), 0, "p0", "ab"))


def test_pairwise_copy_step_zero_and_verdict_are_scored_per_reply():
    items = [_pairwise("6", "-7", "A", t) for t in range(templates.NUM_PAIRWISE_TEMPLATES)]
    right = r"3+5-2=6. B: 6+7=13. A: 6-6=0. \boxed{A}"
    swapped = r"3+5-2=6. B: 6-6=0. A: 6+7=13. \boxed{B}"  # copies each slot's answer from the other
    own_twice = r"3+5-2=6. B: 6-6=0. A: 6-6=0. \boxed{A}"  # writes its own result as both candidates
    bad_sum = r"3+5-2=6. B: 6+7=12. A: 6-6=0. \boxed{A}"
    texts = [right, swapped, own_twice, bad_sum, right, right, right, "no steps \\boxed{A}"]
    out = probe(items, texts, ["6"] * len(items))["pairwise"]
    assert out["items"] == 8
    assert out["format"] == 7 / 8
    assert out["copy_right"] == round(5 / 8, 3)  # right x4 and bad_sum copy both slots
    assert out["step_right"] == round(6 / 8, 3)
    assert out["zero_right"] == round(5 / 8, 3)  # swapped and own_twice put the zero in slot B
    assert out["last_right"] == round(6 / 8, 3)  # swapped has A's step non-zero
    assert out["implied"] == 6  # own_twice implies nothing
    assert out["follows"] == 1.0
    assert out["accuracy"] == 7 / 8  # only swapped boxes the wrong slot


def test_pointwise_copy_reads_the_candidate_from_every_template():
    items, texts = [], []
    for vocab, choices in templates.POINTWISE_VERDICTS.items():
        for t in range(templates.NUM_POINTWISE_TEMPLATES):
            prompt = templates.pointwise_prompt("Compute 3+5-2.", "-7", vocab, t)
            items.append(
                SimpleNamespace(
                    item=Item("pointwise", prompt, choices[1], choices, 0, "p", vocab, "incorrect")
                )
            )
            texts.append(rf"3+5-2=6. 6+7=13. \boxed{{{choices[1]}}}")
    out = probe(items, texts, ["6"] * len(items))["pointwise"]
    assert out["items"] == 16
    assert out["copy_right"] == out["zero_right"] == out["follows"] == out["accuracy"] == 1.0
    # a candidate that is not the prompt's is not a copy
    out = probe(items[:1], [r"3+5-2=6. 6+8=14. \boxed{No}"], ["6"])["pointwise"]
    assert out["copy_right"] == 0.0 and out["step_right"] == 1.0
