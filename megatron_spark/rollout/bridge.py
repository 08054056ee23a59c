"""Weight bridge: live Megatron shards (any TP x PP) -> Hugging Face-named tensors for an engine.

One model replica (its TP x PP ranks) syncs its own engine ranks; data-parallel replicas hold the
same weights and never talk to each other here. For every pipeline stage, in order, bucket by
bucket (a bucket holds whole parameters, at most ``bucket_bytes`` unless one parameter is larger):

1. every TP rank of the owner stage sends its pieces of each TP-split parameter (its part of each
   HF tensor: QKV per query group, gate and up, the real vocabulary rows), point to point, to the
   TP ranks that need full tensors (those with an engine somewhere in their PP group);
   replicated parameters need no traffic;
2. a rank that needs them receives every peer's piece straight into its place in the bucket,
   already in the HF layout (TP rank r's part of an HF tensor is block r along the parameter's TP
   dimension; only the column blocks of row-parallel matrices go through a receive buffer), and
   copies its own pieces there; the tied output copy is skipped;
3. the bucket goes to every engine rank of other stages that shares the owner's TP index (a
   point-to-point send inside the PP group); engine ranks of the owner stage use it in place.

An engine in the same process that offers its own weights (``weight_targets``, the HF engine)
takes the place of the bucket for its own stage: the pieces land in the engine's weights and
nothing is copied twice.

Engine ranks receive the whole model as a stream of ``(hf_name, tensor)`` that they hand to
``engine.update_weights``; every other rank runs the same loop to take part in the transfers.
The engine reshards full tensors to its own TP layout (vLLM's loaders do), so the engine's TP
need not equal training's.

On the CPU, TP peers on one host do step 1-2 through shared memory instead of gloo messages
(``BridgeConfig.shared_memory``): each sender maps a staging file in ``/dev/shm`` that its
receivers map too; per bucket the sender writes its pieces there, a one-element gloo message says
they are ready, the receivers copy them into place and answer that the staging area is free.
Every byte then moves by two memory copies, which two cores run side by side, instead of through
loopback TCP (measured on 2 cores, tools/bench_bridge.py: one gloo message of rank 1's half of a
1.1B bf16 model, 1.14 GB, took 0.33 s, 3.5 GB/s; a memory copy runs at ~13 GB/s). The files
are unlinked as soon as every peer has mapped them, so nothing is left behind. When ``/dev/shm``
lacks room (containers default to 64 MB), a receiver cannot see a sender's file, or the peers are
on different hosts, the bridge uses gloo messages as before.

Why not :func:`~megatron_spark.checkpoint.mapping.export_hf_tensors` (an all-gather per parameter,
``torch.cat``, then a copy into a fresh bucket): measured on the CPU with gloo
(tools/bench_bridge.py), its all-gather moved bytes ~7x slower than send/recv of the same shard,
every TP rank received every byte though usually one hosts the engine, and every fresh
multi-MiB tensor paid page faults worth about two copies. Here the bucket and receive buffers are
reused for the whole sync.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_spark.checkpoint.mapping import (
    Rule,
    full_to_hf,
    globalize,
    is_tied_output_copy,
    rule_for,
)
from megatron_spark.model.config import ModelArch

Shape = tuple[int, ...]
ParamPlan = tuple[Rule, list[tuple[str, Shape]]]
"""One parameter: its mapping rule and the ``(hf_name, shape)`` of the HF tensors it becomes."""


@dataclass(frozen=True)
class BridgeConfig:
    bucket_mb: float = 256.0
    """Largest transfer bucket, MiB (bounds the extra memory of a sync on every rank)."""
    write_in_place: bool = True
    """Write this stage's tensors straight into the engine's own weights when the engine offers
    them (``engine.weight_targets()``, the HF engine does; vLLM's loaders do not): no bucket and
    no engine-side copy. False always goes through buckets (for comparison and debugging)."""
    shared_memory: bool = True
    """On the CPU, TP peers on one host hand each other their pieces through a shared-memory
    staging area (``/dev/shm``, one bucket's share per sender) instead of gloo messages; off, or
    where that is not possible (GPU tensors, peers on several hosts, too little room in
    ``/dev/shm``), gloo/NCCL point-to-point messages."""


SHM_DIR = "/dev/shm"
"""Where staging files are mapped (a tmpfs on Linux)."""

READY, FREE = 1, 2
"""Tags of the shared-memory handshake's messages (``_SharedStaging.exchange``)."""


def unwrap(model):
    """The GPTModel inside DDP / mixed-precision wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _owned_params(model, arch: ModelArch) -> Iterator[tuple[Rule, torch.nn.Parameter]]:
    """This stage's parameters with their rules, the tied output-layer copy left out."""
    from megatron_spark.model.builder import layer_offset

    offset = layer_offset(model)
    for name, param in model.named_parameters():
        gname = globalize(name, offset)
        if not is_tied_output_copy(arch, gname):
            yield rule_for(gname), param


def _stage_plan(model, arch: ModelArch, tp_size: int) -> list[ParamPlan]:
    """Every parameter of this stage in stream order, with its HF tensors' names and shapes."""
    plan = []
    for rule, param in _owned_params(model, arch):
        shape = list(param.shape)
        if rule.tp_dim is not None:
            shape[rule.tp_dim] *= tp_size
        meta = torch.empty(shape, device="meta")
        plan.append((rule, [(n, tuple(t.shape)) for n, t in full_to_hf(arch, rule, meta)]))
    return plan


def _buckets(plan: list[ParamPlan], elem_bytes: int, bucket_bytes: int) -> list[list[ParamPlan]]:
    """Consecutive whole parameters, at most ``bucket_bytes`` a bucket (one larger parameter
    gets a bucket of its own)."""
    buckets, cur, size = [], [], 0
    for entry in plan:
        n = elem_bytes * sum(_numel(shape) for _, shape in entry[1])
        if cur and size + n > bucket_bytes:
            buckets.append(cur)
            cur, size = [], 0
        cur.append(entry)
        size += n
    if cur:
        buckets.append(cur)
    return buckets


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _shard_pieces(arch: ModelArch, rule: Rule, shard: torch.Tensor, tp_rank: int, tp_size: int) -> list:
    """TP rank ``tp_rank``'s part of each HF tensor of ``rule``, as views of its ``shard`` (in
    ``rule.hf_names`` order). Every rank's parts, concatenated along ``rule.tp_dim`` in rank order,
    make the HF tensors: a rank holds whole query groups, row blocks of gate and of up, a row block
    of the padded vocabulary, or a row/column block of a plain matrix. QKV parts keep the group
    dimension, ``[groups, rows per group, *tail]``, so no copy is made here."""
    if rule.kind == "qkv":
        hd, tail = arch.head_dim, tuple(shard.shape[1:])
        rows_q = arch.num_attention_heads // arch.num_query_groups * hd
        grouped = shard.view((arch.num_query_groups // tp_size, rows_q + 2 * hd) + tail)
        return list(grouped.split([rows_q, hd, hd], dim=1))
    if rule.kind == "vocab":  # rows [r*n, (r+1)*n) of the padded vocabulary; keep the real ones
        n = shard.shape[0]
        return [shard[: max(0, min(n, arch.vocab_size - tp_rank * n))]]
    return [t for _, t in full_to_hf(arch, rule, shard)]


def _blocks(dst: torch.Tensor, pieces: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """The block of ``dst`` along ``dim`` that each rank's piece (in rank order) fills, shaped as
    the piece where the block is contiguous (a QKV piece is ``[groups, rows per group, *tail]``).
    ``pieces`` may be meta tensors: only their shapes are read."""
    blocks, offset = [], 0
    for piece in pieces:
        n = piece.numel() * dst.shape[dim] // max(dst.numel(), 1)
        block = dst.narrow(dim, offset, n)
        blocks.append(block if block.shape == piece.shape else block.view(piece.shape))
        offset += n
    return blocks


def _target(targets: dict, name: str, shape: Shape, dtype: torch.dtype) -> torch.Tensor | None:
    """The engine's tensor ``name`` if the bridge can write into it as is, else None."""
    t = targets.get(name)
    ok = t is not None and tuple(t.shape) == tuple(shape) and t.dtype == dtype and t.is_contiguous()
    return t if ok else None


def _reuse(buf: torch.Tensor | None, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``buf`` if it is large enough and of ``dtype``, else a new one of ``numel`` elements."""
    if buf is None or buf.numel() < numel or buf.dtype != dtype:
        buf = torch.empty(numel, dtype=dtype, device=device)
    return buf


class WeightBridge:
    """Streams one model replica's weights to the engine ranks of that replica.

    Construct on every rank of the replica (collective: exchanges the per-stage plans and which
    ranks receive). ``receive`` marks this rank as hosting an engine.
    """

    def __init__(
        self,
        model,
        arch: ModelArch,
        *,
        receive: bool,
        dtype: torch.dtype = torch.float32,
        config: BridgeConfig = BridgeConfig(),
        tp_group=None,
        pp_group=None,
    ):
        self.model = unwrap(model)
        self.arch = arch
        self.receive = receive
        self.dtype = dtype
        self.config = config
        self.tp_group = tp_group
        self.pp_group = pp_group
        self.tp_size = dist.get_world_size(tp_group) if tp_group is not None else 1
        self.tp_rank = dist.get_rank(tp_group) if tp_group is not None else 0
        self.pp_size = dist.get_world_size(pp_group) if pp_group is not None else 1
        self.pp_rank = dist.get_rank(pp_group) if pp_group is not None else 0
        bucket_bytes = max(1, int(config.bucket_mb * 2**20))
        mine = (_stage_plan(self.model, arch, self.tp_size), receive)
        if self.pp_size > 1:
            gathered: list = [None] * self.pp_size
            # Every stage learns every stage's tensor plan and which PP peers host an engine.
            dist.all_gather_object(gathered, mine, group=pp_group)
        else:
            gathered = [mine]
        elem = torch.empty((), dtype=dtype).element_size()
        self.stage_buckets = [_buckets(plan, elem, bucket_bytes) for plan, _ in gathered]
        self.receivers = [recv for _, recv in gathered]  # indexed by PP rank
        # A TP rank needs full tensors when an engine sits anywhere in its PP group.
        self.needs_full = [any(self.receivers)]
        if self.tp_size > 1:
            self.needs_full = [None] * self.tp_size
            # Every TP rank learns which TP peers to send its shards to.
            dist.all_gather_object(self.needs_full, any(self.receivers), group=tp_group)
        self._staging = None
        if config.shared_memory and self.tp_size > 1:
            self._staging = _SharedStaging.create(self)  # collective over the TP group

    @property
    def transport(self) -> str:
        """How this rank's TP group hands shards to the ranks that need full tensors: ``shared
        memory``, ``gloo messages``, or ``none`` (no TP)."""
        if self.tp_size == 1:
            return "none"
        return "shared memory" if self._staging is not None else "gloo messages"

    def _global(self, group, rank: int) -> int:
        return dist.get_global_rank(group, rank) if group is not None else rank

    def stream(self, targets: dict[str, torch.Tensor] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield every HF tensor on engine ranks; other ranks must still exhaust the iterator.

        A yielded tensor is a view into a buffer that the next bucket overwrites: copy it before
        asking for more (``engine.update_weights`` does). ``targets`` (engine ranks): the engine's
        own weights by HF name; this stage's tensors are written straight into them when every
        tensor of a bucket has its target (same shape and dtype) and no other stage needs the
        bucket, and the target itself is yielded (an engine skips copying a tensor onto itself).
        """
        device = next(self.model.parameters()).device
        bucket_buf, scratch = None, {}
        for stage, buckets in enumerate(self.stage_buckets):
            own = stage == self.pp_rank
            if not (own or self.receive):
                continue
            params = _owned_params(self.model, self.arch) if own else None
            fill = own and self.needs_full[self.tp_rank]
            forward = own and any(recv and peer != stage for peer, recv in enumerate(self.receivers))
            for bucket in buckets:
                names = [hf for _, tensors in bucket for hf in tensors]
                sizes = [_numel(shape) for _, shape in names]
                views = None
                if fill and self.receive and not forward and targets is not None:
                    views = [_target(targets, name, shape, self.dtype) for name, shape in names]
                    views = None if any(v is None for v in views) else views
                if views is None and (fill or self.receive):
                    bucket_buf = _reuse(bucket_buf, sum(sizes), self.dtype, device)
                    flat = bucket_buf[: sum(sizes)]
                    views = [c.view(shape) for c, (_, shape) in zip(flat.split(sizes), names)]
                if own:
                    self._fill(bucket, params, views if fill else None, scratch)
                    for peer, recv in enumerate(self.receivers):
                        if recv and peer != stage:
                            # The owner stage's rank with our TP index -> that stage's engine rank.
                            dist.send(flat, dst=self._global(self.pp_group, peer), group=self.pp_group)
                else:
                    dist.recv(flat, src=self._global(self.pp_group, stage), group=self.pp_group)
                if self.receive:
                    yield from zip((name for name, _ in names), views)
            if own:
                assert next(params, None) is None, "plan and model disagree"

    def _fill(self, bucket: list[ParamPlan], params, views: list | None, scratch: dict) -> None:
        """Take part in this bucket's TP transfers and, where ``views`` is given, write every
        parameter into it as HF tensors."""
        i, split = 0, []
        for rule, tensors in bucket:
            got, param = next(params)
            assert got == rule, (got.megatron_name, rule.megatron_name)
            local = param.detach()
            dsts = views[i : i + len(tensors)] if views is not None else None
            if self.tp_size > 1 and rule.tp_dim is not None:
                if self._staging is not None:
                    split.append((rule, local, dsts))
                else:
                    self._exchange(rule, local, dsts, scratch)
            elif dsts is not None:
                for dst, piece in zip(dsts, _shard_pieces(self.arch, rule, local, 0, 1)):
                    _blocks(dst, [piece], 0)[0].copy_(piece)
            i += len(tensors)
        if split:
            self._staging.exchange(split)

    def _rank_blocks(self, rule: Rule, local: torch.Tensor, dsts: list) -> tuple[list, list]:
        """This rank's pieces of ``local`` and, per HF tensor in ``dsts``, the block every TP
        rank's piece fills (peers' pieces are sized from ``local``'s shape: same on every rank)."""
        me, tp = self.tp_rank, self.tp_size
        mine = _shard_pieces(self.arch, rule, local, me, tp)
        meta = local.to("meta")
        pieces = [mine if r == me else _shard_pieces(self.arch, rule, meta, r, tp) for r in range(tp)]
        return mine, [_blocks(dst, [p[j] for p in pieces], rule.tp_dim) for j, dst in enumerate(dsts)]

    def _exchange(self, rule: Rule, local: torch.Tensor, dsts: list | None, scratch: dict) -> None:
        """One TP-split parameter: send this rank's pieces to the TP peers that need full tensors
        and, where ``dsts`` (the HF tensors) is given, fill every rank's block of them. A peer's
        piece is received straight into its block when the block is contiguous (rows: QKV groups,
        gate/up, vocabulary, column-parallel) and through a reused ``scratch`` buffer otherwise
        (columns of a row-parallel matrix); the local pieces are copied while the peers send."""
        me, tp = self.tp_rank, self.tp_size
        mine = _shard_pieces(self.arch, rule, local, me, tp)
        works, staged = [], []
        if dsts is not None:
            mine, blocks = self._rank_blocks(rule, local, dsts)
            for r in range(tp):
                for j, block in enumerate(b[r] for b in blocks):
                    if r == me or block.numel() == 0:
                        continue
                    if not block.is_contiguous():
                        buf = _reuse(scratch.get((r, j)), block.numel(), block.dtype, block.device)
                        scratch[(r, j)] = buf
                        staged.append((block, buf[: block.numel()].view(block.shape)))
                        block = staged[-1][1]
                    # TP peer r's piece j of this parameter (TP group).
                    works.append(dist.irecv(block, src=self._global(self.tp_group, r), group=self.tp_group))
        peers = [r for r, need in enumerate(self.needs_full) if need and r != me]
        outgoing = [p.contiguous() for p in mine if p.numel()] if peers else []
        for r in peers:
            for piece in outgoing:
                # Our piece to TP peer r, which needs full tensors (TP group).
                works.append(dist.isend(piece, dst=self._global(self.tp_group, r), group=self.tp_group))
        if dsts is not None:
            for b, piece in zip(blocks, mine):
                b[me].copy_(piece)
        for w in works:
            w.wait()
        for block, buf in staged:
            block.copy_(buf)

    def staged_bytes(self) -> int:
        """Bytes of this rank's TP-split pieces in its stage's largest bucket: the staging area
        a shared-memory sender needs."""
        params, most = _owned_params(self.model, self.arch), 0
        for bucket in self.stage_buckets[self.pp_rank]:
            n = 0
            for rule, _ in bucket:
                _, param = next(params)
                if rule.tp_dim is not None:
                    pieces = _shard_pieces(self.arch, rule, param.detach(), self.tp_rank, self.tp_size)
                    n += sum(p.numel() * p.element_size() for p in pieces)
            most = max(most, n)
        return most

    def sync(self, engine=None) -> int:
        """Push the current weights into ``engine`` (None on ranks without one). Returns bytes sent
        to this rank's engine (0 elsewhere)."""
        offer = getattr(engine, "weight_targets", None) if self.config.write_in_place else None
        stream = self.stream(offer() if offer is not None else None)
        received = 0

        def counted():
            nonlocal received
            for name, t in stream:
                received += t.numel() * t.element_size()
                yield name, t

        if engine is not None:
            engine.update_weights(counted())
        for _ in stream:  # non-engine ranks (and anything the engine left) still take part
            pass
        return received


def _visible(name: str, nbytes: int) -> bool:
    """A peer's staging file is in this rank's SHM_DIR, at its size."""
    path = os.path.join(SHM_DIR, name)
    return os.path.isfile(path) and os.path.getsize(path) == nbytes


def _machine_id() -> str:
    """The host's identity: its boot id (processes in containers on one host share it), else
    its host name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


class _SharedStaging:
    """The shared-memory path of a TP exchange (module docstring; ``BridgeConfig.shared_memory``).

    ``mine``: this rank's staging area (bytes), written by it and read by its ``receivers``;
    ``peers``: every sender's area by TP rank, mapped on receiving ranks."""

    def __init__(self, bridge: WeightBridge, mine: torch.Tensor | None, peers: dict[int, torch.Tensor]):
        self.bridge = bridge
        self.mine = mine
        self.peers = peers
        me = bridge.tp_rank
        self.receivers = [r for r, need in enumerate(bridge.needs_full) if need and r != me]
        self.flag = torch.zeros(1, dtype=torch.int32)

    @staticmethod
    def create(bridge: WeightBridge) -> _SharedStaging | None:
        """Map the staging files on every TP rank (collective over the TP group); None on every
        rank when any rank cannot: GPU parameters (decided without any message: a TP group's
        ranks share a device type), another machine or another ``/dev/shm`` (a receiver must
        see every sender's file, at its size, before anything is mapped: mapping a missing
        file would create an empty one), too little room in SHM_DIR."""
        if next(bridge.model.parameters()).device.type != "cpu":
            return None
        me, group, size = bridge.tp_rank, bridge.tp_group, bridge.tp_size
        sends = any(need and r != me for r, need in enumerate(bridge.needs_full))
        nbytes = bridge.staged_bytes() if sends else 0
        path, mine, ok = None, None, True
        if sends:
            ok = os.path.isdir(SHM_DIR) and shutil.disk_usage(SHM_DIR).free >= 2 * nbytes
            if ok and nbytes:
                path = os.path.join(SHM_DIR, f"megatron_spark_bridge_{os.getpid()}_{uuid.uuid4().hex}")
                mine = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
        # File names only: each rank looks for them in its own SHM_DIR, which is another folder
        # where containers on one host do not share /dev/shm.
        info: list = [None] * size
        name = None if path is None else os.path.basename(path)
        dist.all_gather_object(info, (_machine_id(), ok, name, nbytes), group=group)
        usable = all(i[1] for i in info) and len({i[0] for i in info}) == 1
        if usable and bridge.needs_full[me]:
            usable = all(f is None or _visible(f, n) for r, (_, _, f, n) in enumerate(info) if r != me)
        seen: list = [None] * size
        dist.all_gather_object(seen, usable, group=group)
        usable = all(seen)
        peers = {}
        if usable and bridge.needs_full[me]:
            for r, (_, _, f, n) in enumerate(info):
                if r != me and f is not None:
                    peers[r] = torch.from_file(
                        os.path.join(SHM_DIR, f), shared=True, size=n, dtype=torch.uint8
                    )
        dist.barrier(group=group)  # every receiver has mapped every file: the names can go
        if path is not None:
            os.unlink(path)
        return _SharedStaging(bridge, mine, peers) if usable else None

    def _peer(self, r: int) -> int:
        return self.bridge._global(self.bridge.tp_group, r)

    def exchange(self, split: list[tuple[Rule, torch.Tensor, list | None]]) -> None:
        """One bucket's TP-split parameters ``(rule, local shard, HF tensors or None)``: write this
        rank's pieces for its receivers, and where HF tensors are given fill them with every
        rank's pieces. Pieces sit in the staging area back to back, in bucket order.

        Two kinds of one-element messages, told apart by tag: READY (sender -> receiver: this
        bucket's pieces are staged) and FREE (receiver -> sender: done reading them). Every
        receive of a FREE is posted before this rank blocks anywhere: where each TP rank both
        sends and receives (an engine on every TP rank, as vLLM's tensor parallelism has), two
        ranks waiting for their FREE sends to complete before posting the matching receives
        would wait for each other forever (gloo completes a send only once its receive is
        posted)."""
        b, group = self.bridge, self.bridge.tp_group
        me, tp = b.tp_rank, b.tp_size
        works = []
        if self.receivers:
            offset = 0
            for rule, local, _ in split:
                for piece in _shard_pieces(b.arch, rule, local, me, tp):
                    n = piece.numel() * piece.element_size()
                    self.mine[offset : offset + n].view(piece.dtype).view(piece.shape).copy_(piece)
                    offset += n
            for r in self.receivers:
                # Our pieces of this bucket are in the staging area (TP group).
                works.append(dist.isend(self.flag, dst=self._peer(r), group=group, tag=READY))
            for r in self.receivers:
                # Receiver r is done with our staging area (TP group).
                works.append(
                    dist.irecv(torch.zeros(1, dtype=torch.int32), src=self._peer(r), group=group, tag=FREE)
                )
        if split[0][2] is not None:
            placed = []
            for rule, local, dsts in split:
                mine, blocks = b._rank_blocks(rule, local, dsts)
                for block, piece in zip((bl[me] for bl in blocks), mine):
                    block.copy_(piece)
                placed.append(blocks)
            for r, area in self.peers.items():
                flag = torch.zeros(1, dtype=torch.int32)
                dist.recv(flag, src=self._peer(r), group=group, tag=READY)  # TP peer r's pieces are staged
                offset = 0
                for (_, local, _), blocks in zip(split, placed):
                    for block in (bl[r] for bl in blocks):
                        n = block.numel() * local.element_size()
                        block.copy_(area[offset : offset + n].view(local.dtype).view(block.shape))
                        offset += n
                # Peer r's staging area may be written again (TP group).
                works.append(dist.isend(self.flag, dst=self._peer(r), group=group, tag=FREE))
        for w in works:  # this bucket's FREE messages included: our area may be reused after
            w.wait()
