"""Files on disk: Hugging Face safetensors in and out, and all-or-nothing output directories."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from megatron_spark.checkpoint.mapping import expected_hf_shapes
from megatron_spark.errors import UserError
from megatron_spark.model.config import ModelArch
from megatron_spark.outputs import check_output

INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


class HFCheckpointReader:
    """Lazy access to the tensors of a Hugging Face directory, validated up front.

    Finds the files through ``model.safetensors.index.json`` when present, else every
    ``*.safetensors`` in the directory. Every file's header is parsed (a truncated or corrupt file
    is rejected before anything is written), every tensor ``arch`` needs must be present with the
    right shape, and all floating tensors must share one dtype.
    """

    def __init__(self, hf_dir: str | Path, arch: ModelArch):
        self.dir = Path(hf_dir)
        self._location: dict[str, Path] = {}
        self._shapes: dict[str, tuple[tuple[int, ...], str]] = {}
        for path in self._files():
            with self._open(path) as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                    self._location[name] = path
                    sl = handle.get_slice(name)
                    self._shapes[name] = (tuple(sl.get_shape()), sl.get_dtype())
        self.dtype = self._validate(arch)

    def _files(self) -> list[Path]:
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{index}: not a valid safetensors index ({e})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise UserError(
                    f"{index}: not a valid safetensors index ('weight_map' must map names to files)"
                )
            for f in weight_map.values():
                # Shards sit next to the index: a name that leads elsewhere is never followed.
                if Path(f).name != f or f in (".", ".."):
                    raise UserError(
                        f"{index}: lists {f!r}, outside {self.dir}; shards must be file names there"
                    )
            files = sorted({self.dir / f for f in weight_map.values()})
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{index}: lists {missing[0].name}, which does not exist")
            return files
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise UserError(f"{self.dir}: no *.safetensors files (only safetensors is supported)")
        return files

    @staticmethod
    def _open(path: Path):
        # Opened per use: a long-lived handle keeps its memory map, and every page read through
        # it, resident for the life of the reader (a second copy of the checkpoint in RSS).
        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: truncated or corrupt safetensors file ({e})") from None

    def _validate(self, arch: ModelArch) -> torch.dtype:
        dtypes = set()
        for name, shape in expected_hf_shapes(arch).items():
            if name not in self._location:
                raise UserError(f"{self.dir}: tensor '{name}' is missing from the checkpoint")
            got, dtype = self._shapes[name]
            if got != shape:
                raise UserError(
                    f"{self._location[name]}: tensor '{name}' has shape {got}, config.json implies {shape}"
                )
            dtypes.add(dtype)
        if len(dtypes) != 1:
            raise UserError(f"{self.dir}: tensors have mixed dtypes {sorted(dtypes)}")
        dtype = dtypes.pop()
        if dtype not in _SAFETENSORS_DTYPES:
            raise UserError(
                f"{self._location[next(iter(expected_hf_shapes(arch)))]}: weights are {dtype}; "
                f"supported: {', '.join(_SAFETENSORS_DTYPES)} (save the model in float32 or bfloat16)"
            )
        return _SAFETENSORS_DTYPES[dtype]

    def get(self, name: str) -> torch.Tensor:
        path = self._location[name]
        try:
            with self._open(path) as handle:
                return handle.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: cannot read tensor '{name}' ({e})") from None


def parse_size(text: str | int) -> int:
    """'2GB' / '500MB' / bytes -> bytes."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for unit, mult in sorted(units.items(), key=lambda u: -len(u[0])):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    try:
        return int(t)
    except ValueError:
        raise UserError(f"size '{text}' not understood (expected e.g. 2GB, 500MB or bytes)") from None


def save_hf_tensors(
    tensors: Iterable[tuple[str, torch.Tensor]], out_dir: Path, max_shard_bytes: int
) -> list[str]:
    """Write a stream of tensors as ``model.safetensors``, or as numbered shards plus an index
    once the total exceeds ``max_shard_bytes``. At most one shard is held in memory."""
    shards: list[tuple[str, list[str], int]] = []
    pending: dict[str, torch.Tensor] = {}
    pending_storages: set[int] = set()
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes, pending_storages
        tmp_name = f"shard-{len(shards):05d}.safetensors"
        save_file(pending, str(out_dir / tmp_name), metadata={"format": "pt"})
        shards.append((tmp_name, list(pending), pending_bytes))
        pending, pending_bytes, pending_storages = {}, 0, set()

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if pending and pending_bytes + nbytes > max_shard_bytes:
            flush()
        tensor = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share storage (gate/up halves of one fused weight):
        # copy only those; other tensors are written straight from the model's memory.
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in pending_storages:
            tensor = tensor.clone()
            ptr = tensor.untyped_storage().data_ptr()
        pending_storages.add(ptr)
        pending[name] = tensor
        pending_bytes += nbytes
    if pending or not shards:
        flush()

    if len(shards) == 1:
        os.replace(out_dir / shards[0][0], out_dir / "model.safetensors")
        return ["model.safetensors"]
    weight_map, total, names = {}, 0, []
    for i, (tmp_name, keys, nbytes) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(out_dir / tmp_name, out_dir / final)
        weight_map.update({k: final for k in keys})
        total += nbytes
        names.append(final)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


@contextlib.contextmanager
def atomic_output_dir(
    out: str | Path,
    overwrite: bool,
    inputs: Iterable[tuple[str, str | Path]] = (),
    writer: bool = True,
    flag: str = "--out",
) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; it becomes ``out`` only if the block completes.

    Refused up front (:func:`megatron_spark.outputs.check_output`): an ``out`` that is or holds
    one of ``inputs``, a non-empty ``out`` unless ``overwrite``, an ``out`` that cannot be
    written. On failure nothing is left behind and an existing ``out`` is untouched. Only the
    ``writer`` process touches the disk (the others get the path it will use).
    """
    out = Path(out).absolute()
    check_output(out, overwrite, inputs, flag=flag, want_dir=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if not writer:
        yield tmp
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
