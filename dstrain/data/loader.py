"""Shards -> masked MLM batches: streaming, split over ranks x DataLoader workers, resumable.

    shards = ShardSet.open("shards/", split="train")
    masker = MLMMasker.for_shards(shards, smoothing=0.7)
    loader = build_loader(shards, micro_batch_size=8, rank=dist.rank, world_size=dist.world_size,
                          num_workers=2, seed=42, masker=masker)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:          # {"input_ids", "attention_mask", "labels"}: (B, L) long each, and the
            ...                       # rows of each loss term: tok_index, mlm_index, mlm_labels, padded (row_index)
        sd = loader.state_dict()      # save with the checkpoint; load_state_dict(sd) resumes after the last batch

How an epoch is laid out (all of it computed from the manifest, identically on every rank, with no
communication):
  * the usable shards are permuted with rng(seed, epoch) and dealt to the G = world_size x max(1, num_workers)
    readers (reader g = rank * W + worker), ranks first, so each sample is read once per epoch and ranks
    differ by at most one shard (data_prep makes shards of equal size +-1);
  * each reader streams its shards through a shuffle buffer, groups `group_batches` batches' worth of
    samples by length (less padding), and yields whole batches; reader g yields n_g = floor(samples_g / B);
  * the DataLoader interleaves its W workers round-robin, so the rank's batch j comes from a known
    (worker, t); every rank stops after the same N batches, a lower bound of every rank's batches in
    any epoch, so len(loader) is one number for the whole run and no rank waits on another;
  * batch j is masked with a generator seeded from (seed, epoch, rank, j): a resumed run, which skips
    the batches it already consumed, sees bitwise the same batches and masks as an uninterrupted run.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np
import torch

from dstrain.config import UserError
from dstrain.data.masking import IGNORE_INDEX, MLMMasker
from dstrain.data.shards import ShardError, ShardSet

log = logging.getLogger("dstrain.data")

STATE_VERSION = 1


def _seed_int(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across processes and Python versions)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


def row_index(attention_mask: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The rows each loss term uses, found on the host while the batch is built (the step then needs no sync).

    attention_mask, labels: (B, L) CPU tensors. Returns tok_index (N,) and mlm_index (M,), flat indices
    into B*L of the non-pad and the masked tokens, mlm_labels (M,) the original ids there, and padded:
    whether any position is padding (without padding the encoders run with no attention mask).
    """
    am = attention_mask.reshape(-1)
    lab = labels.reshape(-1)
    tok = torch.nonzero(am).flatten()
    mlm = torch.nonzero(lab != IGNORE_INDEX).flatten()
    return {"tok_index": tok, "mlm_index": mlm, "mlm_labels": lab[mlm], "padded": bool(tok.numel() != am.numel())}


def pad_batch(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """list of B 1-D arrays -> (input_ids (B, Lmax) long padded with pad_id, attention_mask (B, Lmax) long)."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    lmax = int(lens.max())
    ids = np.full((len(seqs), lmax), pad_id, dtype=np.int64)
    mask = np.arange(lmax)[None, :] < lens[:, None]  # (B, Lmax)
    ids[mask] = np.concatenate(seqs)
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


class _Plan:
    """Who reads which shards in one epoch, and how many batches each reader and each rank yields."""

    def __init__(self, shards: ShardSet, epoch: int, seed: int, world_size: int, workers: int,
                 micro_batch_size: int, shuffle: bool, drop_last: bool):
        entries = shards.shard_entries
        G = world_size * workers
        if len(entries) < G:
            per = int(shards.manifest.get("samples_per_shard", 0)) or max(1, shards.num_samples // max(1, len(entries)))
            suggest = max(1, shards.num_samples // G)
            raise UserError(
                f"data folder {shards.root} split {shards.split!r} has {len(entries)} usable shard(s), but "
                f"{world_size} rank(s) x {workers} loader worker(s) = {G} readers need at least one shard each "
                f"(each sample is read once per epoch). Rebuild the shards with a smaller --samples_per_shard "
                f"(now ~{per}; at most {suggest} gives >= {G} shards), or use fewer ranks or loader workers.")
        order = _rng(seed, epoch, 0x5EED).permutation(len(entries)) if shuffle else np.arange(len(entries))
        W = workers
        # Deal shards to readers ranks-first ((r0,w0), (r1,w0), ..., (r0,w1), ...) so that ranks differ by
        # at most one shard.
        deal = [r * W + w for w in range(W) for r in range(world_size)]
        self.assign: list[list[dict[str, Any]]] = [[] for _ in range(G)]
        for pos, i in enumerate(order):
            self.assign[deal[pos % G]].append(entries[i])
        counts = [sum(int(e["num_samples"]) for e in a) for a in self.assign]
        B = micro_batch_size
        self.reader_batches = [c // B if drop_last else -(-c // B) for c in counts]  # n_g, exact this epoch
        # N must not depend on the epoch (schedules use len(loader)): a lower bound on every epoch's
        # per-rank batches, since reader g always gets k_g shards, at least the k_g smallest ones' samples.
        sizes = np.sort([int(e["num_samples"]) for e in entries])
        k = [len(a) for a in self.assign]
        low = [int(sizes[:kg].sum()) // B if drop_last else -(-int(sizes[:kg].sum()) // B) for kg in k]
        self.num_batches = min(sum(low[r * W:(r + 1) * W]) for r in range(world_size))
        if self.num_batches == 0:
            raise UserError(
                f"data folder {shards.root} split {shards.split!r}: {shards.num_samples} samples over "
                f"{G} readers give no full micro-batch of {B} on some rank; lower --micro_batch_size_per_gpu, "
                f"use fewer ranks or loader workers, or build more data")

    def rank_index(self, rank: int, workers: int, worker: int, t: int) -> int:
        """Rank-level index j of reader (rank, worker)'s t-th batch under round-robin over workers,
        skipping exhausted ones (what torch's DataLoader does in order):
            j = sum_w' min(t, n_w') + #{w' < worker : n_w' > t}."""
        n = self.reader_batches[rank * workers:(rank + 1) * workers]
        return sum(min(t, x) for x in n) + sum(1 for x in n[:worker] if x > t)


class _EpochStream(torch.utils.data.IterableDataset):
    """What one DataLoader worker does for one epoch: read, shuffle, group, batch, mask."""

    def __init__(self, loader: "ShardLoader", epoch: int, start: int):
        super().__init__()
        self.loader, self.epoch, self.start = loader, epoch, start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
        try:
            yield from self._batches(worker)
        except ShardError as e:
            # Handed to the main process as data, so it can raise a clean error (no worker traceback).
            yield {"_error": str(e), "_shard": e.shard}

    def _batches(self, worker: int) -> Iterator[dict[str, Any]]:
        L = self.loader
        W = L.workers
        plan = L.plan(self.epoch)
        g = L.rank * W + worker
        quota = plan.reader_batches[g]
        B = L.micro_batch_size
        stats = {"reader": g, "bad_shards": [], "bad_samples": 0, "refill_batches": 0}
        t = 0
        for pass_idx in range(4):  # pass 0 is the epoch; later passes only refill after skipped data
            got_any = False
            for group in self._groups(plan.assign[g], g, pass_idx, stats):
                got_any = True
                for seqs in group:
                    if t >= quota:
                        return
                    if len(seqs) < B and L.drop_last:
                        continue
                    j = plan.rank_index(L.rank, W, worker, t)
                    t += 1
                    if pass_idx > 0:
                        stats["refill_batches"] += 1
                    if j < self.start:
                        continue  # consumed before the checkpoint this run resumed from
                    if j >= plan.num_batches:
                        return
                    yield self._collate(seqs, j, stats)
            if t >= quota:
                return
            if not got_any:
                break
        raise ShardError(",".join(stats["bad_shards"]) or "?",
                         f"loader reader {g} (rank {L.rank}, worker {worker}) found no usable sample in its shards "
                         f"{[e['name'] for e in plan.assign[g]]}: {stats}")

    def _samples(self, entries, g: int, pass_idx: int, stats) -> Iterator[np.ndarray]:
        L = self.loader
        order = _rng(L.seed, self.epoch, g, pass_idx, 1).permutation(len(entries)) if L.shuffle else range(len(entries))
        for i in order:
            e = entries[i]
            if e["name"] in stats["bad_shards"]:
                continue
            def bad_sample(err: ShardError) -> None:
                stats["bad_samples"] += 1
                log.warning("skipping sample: %s", err)

            try:
                for _key, ids in L.shards.read_shard(e, on_bad_sample=None if L.shards.strict else bad_sample):
                    yield ids
            except ShardError as err:
                if L.shards.strict:
                    raise
                # Tolerant: samples already yielded from this shard stay (they passed their checks).
                stats["bad_shards"].append(e["name"])
                log.warning("skipping shard: %s", err)

    def _groups(self, entries, g: int, pass_idx: int, stats) -> Iterator[list[list[np.ndarray]]]:
        """Lists of batches; each list covers `group_batches` batches' worth of the shuffled stream."""
        L = self.loader
        rng = _rng(L.seed, self.epoch, g, pass_idx, 2)
        stream = self._samples(entries, g, pass_idx, stats)
        if L.shuffle:
            stream = _shuffle_buffer(stream, L.shuffle_buffer, rng)
        B = L.micro_batch_size
        chunk_size = B * (L.group_batches if L.group_by_length else 1)
        chunk: list[np.ndarray] = []
        for ids in stream:
            chunk.append(ids)
            if len(chunk) == chunk_size:
                yield self._split(chunk, rng)
                chunk = []
        if chunk:
            yield self._split(chunk, rng)

    def _split(self, chunk: list[np.ndarray], rng: np.random.Generator) -> list[list[np.ndarray]]:
        L = self.loader
        B = L.micro_batch_size
        if L.group_by_length:
            lens = np.fromiter((len(c) for c in chunk), dtype=np.int64, count=len(chunk))
            chunk = [chunk[i] for i in np.argsort(lens, kind="stable")]
        batches = [chunk[i:i + B] for i in range(0, len(chunk), B)]
        full = [b for b in batches if len(b) == B]
        part = [b for b in batches if len(b) < B]
        if L.group_by_length and L.shuffle:
            full = [full[i] for i in rng.permutation(len(full))]  # don't feed short-to-long in order
        return full + part  # a partial batch only ever ends a reader's stream

    def _collate(self, seqs: list[np.ndarray], j: int, stats) -> dict[str, Any]:
        L = self.loader
        input_ids, attention_mask = pad_batch(seqs, L.pad_id)
        gen = torch.Generator().manual_seed(_seed_int(L.seed, self.epoch, L.rank, j, 7))
        if L.masker is not None:
            input_ids, labels = L.masker(input_ids, gen)
        else:
            labels = torch.full_like(input_ids, IGNORE_INDEX)
        r = row_index(attention_mask, labels)
        # One (3, B, L) tensor and one of indices cross the process boundary instead of six: per-tensor IPC
        # cost dominates.
        return {"packed": torch.stack([input_ids, attention_mask, labels]),
                "rows": torch.cat([r["tok_index"], r["mlm_index"], r["mlm_labels"]]),
                "_n": (int(r["tok_index"].numel()), int(r["mlm_index"].numel())), "_padded": r["padded"],
                "_index": j, "_stats": dict(stats, bad_shards=list(stats["bad_shards"]))}


def _shuffle_buffer(stream: Iterator[np.ndarray], size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Approximate shuffle with a buffer of `size` samples (webdataset's shuffle, seeded)."""
    buf: list[np.ndarray] = []
    draws = np.empty(0)
    k = 0
    for x in stream:
        if len(buf) < size:
            buf.append(x)
            continue
        if k == len(draws):
            draws, k = rng.random(4096), 0
        i = int(draws[k] * size)
        k += 1
        yield buf[i]
        buf[i] = x
    for i in rng.permutation(len(buf)):
        yield buf[i]


class ShardLoader:
    """Iterates one epoch of dict batches per `for` loop; see the module docstring."""

    def __init__(self, shards: ShardSet, *, micro_batch_size: int, rank: int, world_size: int, num_workers: int,
                 seed: int, masker: MLMMasker | None, shuffle: bool = True, group_by_length: bool = True,
                 drop_last: bool = True, shuffle_buffer: int = 2000, group_batches: int = 50,
                 prefetch_factor: int = 4, pin_memory: bool = False):
        if micro_batch_size < 1:
            raise UserError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world_size {world_size}")
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        self.shards = shards
        self.micro_batch_size = int(micro_batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.workers = max(1, self.num_workers)  # readers per rank (num_workers=0 reads in-process)
        self.seed = int(seed)
        self.masker = masker
        self.shuffle, self.group_by_length, self.drop_last = shuffle, group_by_length, drop_last
        self.shuffle_buffer, self.group_batches = int(shuffle_buffer), int(group_batches)
        self.prefetch_factor = prefetch_factor
        self.pin_memory = bool(pin_memory)  # CUDA: page-locked batches, so .to(device, non_blocking=True) is async
        self.pad_id = int(shards.tokenizer_info["pad_token_id"])
        self.epoch = 0
        self.batches_consumed = 0  # within self.epoch
        self._plans: dict[int, _Plan] = {}
        self.stats: dict[str, Any] = {"bad_shards": len(shards.bad_shards), "bad_shard_names": sorted(shards.bad_shards),
                                      "bad_samples": 0, "refill_batches": 0}
        self.plan(0)  # fail now, not in a worker, if the split cannot feed this many readers

    def plan(self, epoch: int) -> _Plan:
        if epoch not in self._plans:
            self._plans = {epoch: _Plan(self.shards, epoch, self.seed, self.world_size, self.workers,
                                        self.micro_batch_size, self.shuffle, self.drop_last)}
        return self._plans[epoch]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (the same on every rank)."""
        return self.plan(self.epoch).num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate. Optional: the loader advances by itself after each full epoch.
        Keeps the position when `epoch` is the one it is in (e.g. a resumed state's epoch)."""
        if epoch != self.epoch:
            self.epoch, self.batches_consumed = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches_consumed": self.batches_consumed,
                "seed": self.seed, "world_size": self.world_size, "num_workers": self.workers,
                "micro_batch_size": self.micro_batch_size, "num_shards": len(self.shards.shard_entries),
                "num_samples": self.shards.num_samples}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Continue after the last batch `sd` recorded. The data order depends on the seed, world size,
        loader workers, micro-batch and shards, so a state from a different layout is refused."""
        mine = self.state_dict()
        diff = [f"{k} {sd.get(k)!r} -> {mine[k]!r}" for k in ("seed", "world_size", "num_workers", "micro_batch_size",
                                                              "num_shards", "num_samples") if sd.get(k) != mine[k]]
        if diff:
            raise UserError(
                "cannot restore the data position: the checkpoint's loader ran with a different layout ("
                + ", ".join(diff) + "). Resume with the same ranks, loader workers, micro-batch, seed and shards, "
                "or start the data order afresh from the checkpoint's epoch.")
        self.epoch, self.batches_consumed = int(sd["epoch"]), int(sd["batches_consumed"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch (all of it unless resumed mid-epoch); afterwards the loader is at
        the next epoch, so `while True: yield from loader` runs epoch after epoch with new shuffles."""
        epoch, start = self.epoch, self.batches_consumed
        n = self.plan(epoch).num_batches
        if start >= n:
            # restored from a state saved after an epoch's last batch: that epoch is done, yield nothing
            self.epoch, self.batches_consumed = epoch + 1, 0
            return
        ds = _EpochStream(self, epoch, start)
        # A generator of our own: otherwise creating the iterator draws a base seed from the global torch
        # RNG and shifts the trainer's dropout stream after a resume.
        kw = dict(num_workers=self.num_workers, batch_size=None, collate_fn=_identity, pin_memory=self.pin_memory,
                  generator=torch.Generator().manual_seed(self.seed + epoch))
        if self.num_workers > 0:
            kw.update(prefetch_factor=self.prefetch_factor, multiprocessing_context="fork",
                      worker_init_fn=_ignore_stop_signals)
        dl = torch.utils.data.DataLoader(ds, **kw)
        expect = start
        worker_stats: dict[int, dict[str, Any]] = {}
        self._base_stats = {k: self.stats[k] for k in ("bad_samples", "refill_batches")}
        # Batches are put back in index order: after a mid-epoch resume the DataLoader's round-robin starts
        # at worker 0 although batch `start` may belong to another worker.
        pending: dict[int, dict[str, Any]] = {}
        it = iter(dl)
        try:
            for item in it:
                if "_error" in item:
                    raise ShardError(item["_shard"], item["_error"])
                self._update_stats(worker_stats, item["_stats"])
                packed, (n_tok, n_mlm) = item["packed"], item["_n"]
                tok, mlm, mlm_labels = item["rows"].split([n_tok, n_mlm, n_mlm])
                pending[item["_index"]] = {"input_ids": packed[0], "attention_mask": packed[1], "labels": packed[2],
                                           "tok_index": tok, "mlm_index": mlm, "mlm_labels": mlm_labels,
                                           "padded": item["_padded"]}
                if len(pending) > 2 * self.workers * (self.prefetch_factor + 1):
                    raise RuntimeError(f"data loader on rank {self.rank}: batch {expect} never arrived "
                                       f"(holding {sorted(pending)[:8]})")
                while expect in pending:
                    batch = pending.pop(expect)
                    expect += 1
                    self.batches_consumed = expect
                    yield batch
                    if expect >= n:
                        break
                if expect >= n:
                    break
        finally:
            del it
        if expect >= n:
            self.epoch, self.batches_consumed = epoch + 1, 0
        else:
            raise RuntimeError(f"rank {self.rank} got {expect} of {n} batches in epoch {epoch}")

    def _update_stats(self, worker_stats: dict[int, dict[str, Any]], s: dict[str, Any]) -> None:
        """Merge a reader's running counts (carried on its batches) and enforce max_bad_fraction."""
        worker_stats[s["reader"]] = s
        names = set(self.shards.bad_shards)
        for ws in worker_stats.values():
            names.update(ws["bad_shards"])
        self.stats["bad_shards"] = len(names)
        self.stats["bad_shard_names"] = sorted(names)
        self.stats["bad_samples"] = self._base_stats["bad_samples"] + sum(w["bad_samples"] for w in worker_stats.values())
        self.stats["refill_batches"] = self._base_stats["refill_batches"] + sum(
            w["refill_batches"] for w in worker_stats.values())
        total = self.shards.num_shards_total
        if len(names) > self.shards.max_bad_fraction * total:
            raise UserError(f"data folder {self.shards.root}: {len(names)} of {total} shards are bad, more than "
                            f"max_bad_fraction {self.shards.max_bad_fraction}: {', '.join(sorted(names))}")


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers ignore SIGUSR1/SIGTERM: Slurm signals every process of a job, and the main process must be
    able to finish its step and save a checkpoint with its workers alive. They exit with their parent."""
    import signal

    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def _identity(x):
    return x


def build_loader(shards: ShardSet, *, micro_batch_size: int, rank: int, world_size: int, num_workers: int,
                 seed: int, masker: MLMMasker | None, shuffle: bool = True, group_by_length: bool = True,
                 drop_last: bool = True, **kw) -> ShardLoader:
    """The training loader: see the module docstring and ShardLoader."""
    return ShardLoader(shards, micro_batch_size=micro_batch_size, rank=rank, world_size=world_size,
                       num_workers=num_workers, seed=seed, masker=masker, shuffle=shuffle,
                       group_by_length=group_by_length, drop_last=drop_last, **kw)


class EvalLoader:
    """Held-out batches: every sample of the split exactly once across ranks, fixed masks, no shuffle.

    Rank r takes samples r, r + world, r + 2*world, ... in shard order; batches are sorted by length
    within groups to cut padding. Every rank yields N = ceil(max_r n_r / B) batches; a rank with fewer
    samples pads its last batch with copies of one of its samples whose labels are all -100 (they add
    nothing to the MLM loss or accuracy), so collective ops in an eval loop never wait on a missing batch.
    """

    def __init__(self, shards: ShardSet, *, micro_batch_size: int, rank: int, world_size: int,
                 masker: MLMMasker | None, seed: int = 0, group_batches: int = 50):
        self.shards, self.B, self.rank, self.world = shards, int(micro_batch_size), int(rank), int(world_size)
        self.masker, self.seed, self.group_batches = masker, int(seed), int(group_batches)
        self.pad_id = int(shards.tokenizer_info["pad_token_id"])
        total = shards.num_samples
        n_max = len(range(0, total, self.world))
        self.n_rank = len(range(self.rank, total, self.world))
        self.num_batches = -(-n_max // self.B)

    def __len__(self) -> int:
        return self.num_batches

    def _samples(self) -> Iterator[np.ndarray]:
        i = 0
        for e in self.shards.shard_entries:
            for _key, ids in self.shards.read_shard(e):
                if i % self.world == self.rank:
                    yield ids
                i += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        B = self.B
        j = 0
        filler: np.ndarray | None = None
        chunk: list[np.ndarray] = []

        def emit(seqs, n_filler=0):
            input_ids, attention_mask = pad_batch(seqs, self.pad_id)
            gen = torch.Generator().manual_seed(_seed_int(self.seed, 0xE7A1, j))
            if self.masker is not None:
                input_ids, labels = self.masker(input_ids, gen)
            else:
                labels = torch.full_like(input_ids, IGNORE_INDEX)
            if n_filler:
                labels[-n_filler:] = IGNORE_INDEX
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

        def flush(chunk):
            lens = np.fromiter((len(c) for c in chunk), dtype=np.int64, count=len(chunk))
            chunk = [chunk[i] for i in np.argsort(lens, kind="stable")]
            return [chunk[i:i + B] for i in range(0, len(chunk), B)]

        for ids in self._samples():
            filler = ids if filler is None else filler
            chunk.append(ids)
            if len(chunk) == B * self.group_batches:
                for seqs in flush(chunk):
                    yield emit(seqs)
                    j += 1
                chunk = []
        batches = flush(chunk) if chunk else []
        if filler is None:  # fewer samples than ranks: borrow the split's first sample
            filler = next(iter(self.shards.read_shard(self.shards.shard_entries[0])))[1]
        while len(batches) + j < self.num_batches:
            batches.append([])
        for seqs in batches:
            n_fill = 1 if not seqs else 0
            yield emit(seqs + [filler] * n_fill, n_fill)
            j += 1


def build_eval_loader(shards: ShardSet, *, micro_batch_size: int, rank: int, world_size: int,
                      masker: MLMMasker | None, seed: int = 0, **kw) -> EvalLoader:
    """Held-out MLM batches for the val split (deterministic masks, no shuffle); see EvalLoader."""
    return EvalLoader(shards, micro_batch_size=micro_batch_size, rank=rank, world_size=world_size,
                      masker=masker, seed=seed, **kw)
