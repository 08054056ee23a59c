"""README's two commands are the ones CI and users run."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_lines = [
        line
        for line in (REPO / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "export "))
    ]
    assert len(ci_lines) == 2
    assert f"\n{ci_lines[0]}\n" in readme
    # then the vLLM engine's tests, which the README names
    assert ci_lines[1] == "bash tools/vllm_tests.sh" and f"`{ci_lines[1]}`" in readme


def test_readme_main_command_is_present():
    assert "\npip install torch==2.13.0 -e . && megatron-spark demo\n" in (REPO / "README.md").read_text()
