"""megatron_spark: SPARK (policy, judge and self-corrector in one model) on megatron-core."""

from megatron_spark.platform import quiet_megatron_import_warnings

__version__ = "0.1.0"

quiet_megatron_import_warnings()
