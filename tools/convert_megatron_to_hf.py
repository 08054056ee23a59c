"""Thin wrapper: ``python tools/convert_megatron_to_hf.py --ckpt CKPT --out DIR [--overwrite]``.

Same as ``megatron-spark convert megatron-to-hf``.
"""

import sys

from megatron_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "megatron-to-hf", *sys.argv[1:]]))
