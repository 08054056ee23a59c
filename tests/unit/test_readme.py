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
    assert len(ci_lines) == 4
    assert f"\n{ci_lines[0]}\n" in readme
    # then the vLLM engine's tests, the TRL cross-checks and the demo's claim, which the README names
    assert ci_lines[1:] == [
        "bash tools/vllm_tests.sh",
        "bash tools/trl_tests.sh",
        "bash tools/claim_tests.sh",
    ]
    assert all(f"`{line}`" in readme for line in ci_lines[1:])


def test_readme_main_command_is_present():
    readme = (REPO / "README.md").read_text()
    assert "\npip install torch==2.13.0 -e . -c constraints.txt && megatron-spark demo\n" in readme


def test_both_commands_install_the_tested_set():
    """The README's two commands and the vLLM and TRL scripts install with the constraints files, which
    pin exact versions, leave torch to the commands, and stay inside this package's ranges (a pin
    outside them would make pip fail to resolve)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canon

    readme = (REPO / "README.md").read_text()
    assert readme.count(" -c constraints.txt && ") == 2
    assert "tools/vllm-constraints.txt" in (REPO / "tools/vllm_tests.sh").read_text()
    assert "tools/trl-constraints.txt" in (REPO / "tools/trl_tests.sh").read_text()
    ranges = {
        canon(r.name): r.specifier for r in map(Requirement, requires("megatron_spark")) if not r.marker
    }
    for name in ("constraints.txt", "tools/vllm-constraints.txt", "tools/trl-constraints.txt"):
        for line in (REPO / name).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            pin = Requirement(line)
            (spec,) = pin.specifier
            assert spec.operator == "==", f"{name}: {line} is not an exact pin"
            assert canon(pin.name) != "torch", f"{name}: torch is pinned by the install commands"
            if canon(pin.name) in ranges:
                assert ranges[canon(pin.name)].contains(spec.version), (name, line)
