"""The arithmetic task (formats, correctness, splits, determinism) and the resumable sampler."""

import re

import pytest

from megatron_spark.data.tasks import (
    ArithmeticConfig,
    ArithmeticTask,
    Problem,
    ProblemSampler,
    arithmetic_problem,
)
from megatron_spark.errors import UserError

STEP = re.compile(r"^(-?\d+)([+*-])(\d+)=(-?\d+)\.$")


def test_prompt_and_solution_format():
    p = arithmetic_problem("u", [12, 34, 5], ["+", "-"])
    assert p == Problem("u", "Compute 12+34-5.", "41", "12+34=46. 46-5=41. \\boxed{41}")
    two = arithmetic_problem("v", [12, 34], ["+"])
    assert (two.prompt, two.solution, two.answer) == ("Compute 12+34.", "12+34=46. \\boxed{46}", "46")


def test_products_are_worked_first():
    p = arithmetic_problem("u", [3, 4, 5, 2], ["+", "*", "-"])
    assert p.solution == "4*5=20. 3+20=23. 23-2=21. \\boxed{21}" and p.answer == "21"
    chain = arithmetic_problem("u", [2, 3, 4, 1], ["*", "*", "-"])
    assert chain.solution == "2*3=6. 6*4=24. 24-1=23. \\boxed{23}"
    neg = arithmetic_problem("u", [5, 12, 3], ["-", "+"])
    assert neg.solution == "5-12=-7. -7+3=-4. \\boxed{-4}" and neg.answer == "-4"


def test_answers_and_every_step_are_correct():
    task = ArithmeticTask(ArithmeticConfig(min_operands=2, max_operands=5, max_digits=3, operators="+-*"))
    seen_ops = set()
    for i in range(500):
        p = task.train_problem(i)
        expr = p.prompt.removeprefix("Compute ").removesuffix(".")
        assert int(p.answer) == eval(expr)  # Python's precedence is the one the task promises
        *steps, box = p.solution.split(" ")
        assert box == f"\\boxed{{{p.answer}}}" and len(steps) == len(re.findall(r"[+*-]", expr))
        for step in steps:
            a, op, b, c = STEP.match(step).groups()
            assert eval(f"({a}){op}{b}") == int(c)
            seen_ops.add(op)
    assert seen_ops == {"+", "-", "*"}


def test_operands_respect_the_config():
    task = ArithmeticTask(ArithmeticConfig(min_operands=3, max_operands=4, max_digits=1, operators="*"))
    for i in range(200):
        expr = task.train_problem(i).prompt.removeprefix("Compute ").removesuffix(".")
        operands = expr.split("*")
        assert 3 <= len(operands) <= 4 and all(len(x) == 1 for x in operands)


@pytest.mark.parametrize(
    "fields",
    [
        {"min_operands": 1},
        {"max_operands": 1},
        {"max_digits": 0},
        {"operators": "+/"},
        {"operators": ""},
        {"operators": "++"},
        {"held_out_size": -1},
        {"held_out_size": 60, "max_digits": 1, "operators": "+"},  # only 100 distinct problems
    ],
)
def test_bad_config_names_the_field(fields):
    with pytest.raises(UserError) as e:
        ArithmeticTask(ArithmeticConfig(**fields))
    name = next(iter(fields)) if "held_out_size" not in fields else "held_out_size"
    assert f"{name}=" in str(e.value)


@pytest.mark.parametrize(
    "cfg",
    [
        ArithmeticConfig(),
        # 200 distinct problems, a quarter held out: collisions are frequent and must be redrawn.
        ArithmeticConfig(max_digits=1, held_out_size=50),
    ],
)
def test_held_out_never_appears_in_train(cfg):
    task = ArithmeticTask(cfg)
    held = {p.prompt for p in task.held_out()}
    assert len(held) == len(task.held_out()) == cfg.held_out_size
    train = [task.train_problem(i).prompt for i in range(5000)]
    assert not held & set(train)
    if cfg.max_digits == 1:
        assert len(set(train)) == 150  # every non-held-out problem is still reachable


def test_problems_are_deterministic_and_order_free():
    a = ArithmeticTask(ArithmeticConfig(max_operands=3, operators="+-*"))
    b = ArithmeticTask(ArithmeticConfig(max_operands=3, operators="+-*"))
    forward = [a.train_problem(i) for i in range(100)]
    backward = [b.train_problem(i) for i in reversed(range(100))][::-1]
    assert forward == backward and a.held_out() == b.held_out()
    assert len({p.uid for p in forward}) == 100
    other = ArithmeticTask(ArithmeticConfig(max_operands=3, operators="+-*", seed=1))
    assert [other.train_problem(i) for i in range(100)] != forward


class ListSource:
    name = "list"

    def __init__(self, size: int):
        self.problems = [Problem(f"p{i}", f"prompt {i}", str(i)) for i in range(size)]

    def num_train(self):
        return len(self.problems)

    def train_problem(self, index):
        return self.problems[index]

    def held_out(self):
        return []


def _uids(batches):
    return [p.uid for batch in batches for p in batch]


def test_finite_sampler_walks_shuffled_epochs():
    sampler = ProblemSampler(ListSource(10), seed=3)
    uids = _uids(sampler.next_batch(4) for _ in range(5))  # 20 problems: exactly two epochs
    first, second = uids[:10], uids[10:]
    assert sorted(first) == sorted(second) == sorted(f"p{i}" for i in range(10))
    assert first != second and first != sorted(first, key=lambda u: int(u[1:]))
    assert sampler.epoch == 1 and sampler.position == 10
    assert _uids([ProblemSampler(ListSource(10), seed=3).next_batch(20)]) == uids
    assert _uids([ProblemSampler(ListSource(10), seed=4).next_batch(20)]) != uids


@pytest.mark.parametrize("size", [7, None])
def test_sampler_resumes_at_the_same_position(size):
    source = ListSource(7) if size else ArithmeticTask(ArithmeticConfig())
    straight = ProblemSampler(source, seed=11)
    expected = _uids(straight.next_batch(3) for _ in range(6))

    first = ProblemSampler(source, seed=11)
    head = _uids(first.next_batch(3) for _ in range(2))  # stops mid-epoch (6 of 7)
    state = first.state_dict()
    assert all(type(v) is int for v in state.values())
    resumed = ProblemSampler(source, seed=0)
    resumed.load_state_dict(dict(state))
    assert head + _uids(resumed.next_batch(3) for _ in range(4)) == expected


def test_sampler_refuses_empty_batches_and_sources():
    with pytest.raises(UserError, match="num_prompts=0"):
        ProblemSampler(ListSource(3)).next_batch(0)
    with pytest.raises(UserError, match="no train problems"):
        ProblemSampler(ListSource(0))
