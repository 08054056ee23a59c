"""Thin wrapper: ``python tools/convert_hf_to_megatron.py --hf DIR --out CKPT [--overwrite]``.

Same as ``megatron-spark convert hf-to-megatron``.
"""

import sys

from megatron_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "hf-to-megatron", *sys.argv[1:]]))
