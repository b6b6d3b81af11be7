"""Batched token log-likelihoods of a causal LM, with leave-one-out variants sharing their prefix.

Perplexity-based defences (ONION, Qi et al., EMNLP 2021, §3) score a text and many copies of it
with one word deleted. Two ways to get the negative log-likelihood (NLL) of those sequences:

- :func:`sequence_nll` runs every sequence in full: sorted by length, right-padded, padding
  masked, ``batch_size`` sequences per forward pass.
- :func:`shared_prefix_nll` uses that a variant agrees with its base text up to the deleted word:
  under a causal LM the tokens before the deletion have the same NLL in both, and their keys and
  values are the base's. Each base runs once with its key/value cache kept; each variant then runs
  only from the last shared token on, attending to the base's cached prefix (a per-row length in a
  padded batch, masked beyond it, with explicit positions). Removing word ``j`` of ``n`` costs
  about ``n − j`` tokens instead of ``n``: about half the work of :func:`sequence_nll` for
  leave-one-out variants, and nothing at all for a variant that is a prefix of its base (the last
  word removed). The shared prefix is the longest common prefix of the two token sequences, so
  this is exact for any tokenizer; the results equal :func:`sequence_nll`'s up to float rounding
  (tested).

Every sequence starts with a context token (the LM's start token) whose own NLL is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _padded(sequences: Sequence[Sequence[int]], pad: int):
    """Right-padded ids and attention mask (long tensors) for a list of sequences."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _token_nll(logits, targets, valid):
    """Per-position NLL (float32), zero where not ``valid``; logits ``(B, T, V)``, targets ``(B, T)``."""
    import torch

    # cross_entropy over (batch, vocab, positions): no second (B, T, V) copy as log-probabilities.
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return nll.masked_fill(~valid, 0.0)


def _pad_id(lm: Any) -> int:
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else lm.start_token_id)


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(starts, desc=desc, unit="batch")
    return starts


def sequence_nll(
    lm: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 32, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and count of predicted tokens for each token sequence, each run in full.

    ``lm`` is a :class:`~peftshield.models.causal_lm.CausalLM`. Each sequence's first token is
    context only; every later token is predicted from the ones before it. Sequences are sorted by
    length (longest first, so a memory problem shows at once), right-padded with the padding
    masked, and results come back in the caller's order.
    """
    import torch

    n = len(sequences)
    sums = np.zeros(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    if n == 0:
        return sums, counts
    model, device, pad = lm.model, lm.device, _pad_id(lm)
    lengths = np.array([len(s) for s in sequences])
    order = np.argsort(-lengths, kind="stable")
    with torch.no_grad():
        for start in _batches(n, batch_size, progress, "LM passes"):
            idx = order[start : start + batch_size]
            ids, mask = _padded([sequences[i] for i in idx], pad)
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            valid = mask[:, 1:].bool()
            nll = _token_nll(logits, ids[:, 1:], valid)
            sums[idx] = nll.sum(dim=1).double().cpu().numpy()
            counts[idx] = valid.sum(dim=1).cpu().numpy()
    return sums, counts


def _layer_kv(cache: Any) -> list[tuple[Any, Any]]:
    """The (keys, values) tensors of each layer of a transformers cache object."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):  # older transformers
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v in cache]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefix_nll(
    lm: Any,
    bases: Sequence[Sequence[int]],
    variants: Sequence[tuple[int, Sequence[int]]],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NLL sums and token counts of ``bases`` and of ``variants`` that share a prefix with a base.

    ``variants`` are ``(base index, token ids)`` pairs. Returns ``(base_sums, base_counts,
    variant_sums, variant_counts)`` equal (up to rounding) to :func:`sequence_nll` on the same
    sequences; see the module docstring for how the shared prefix is reused.
    """
    import torch
    from transformers import DynamicCache

    from peftshield.models.inference import cache_argument

    model, device, pad = lm.model, lm.device, _pad_id(lm)
    nb, nv = len(bases), len(variants)
    base_sums, base_counts = np.zeros(nb), np.zeros(nb, dtype=np.int64)
    var_sums, var_counts = np.zeros(nv), np.zeros(nv, dtype=np.int64)
    if nb == 0:
        return base_sums, base_counts, var_sums, var_counts
    # 1. The bases, in full, keeping each one's per-token NLL and its keys/values (valid part).
    token_nll: list[np.ndarray] = [np.zeros(0)] * nb
    kv: list[list[tuple[Any, Any]]] = [[] for _ in range(nb)]
    lengths = np.array([len(s) for s in bases])
    order = np.argsort(-lengths, kind="stable")
    with torch.no_grad():
        for start in _batches(nb, batch_size, progress, "LM passes (texts)"):
            idx = order[start : start + batch_size]
            ids, mask = _padded([bases[i] for i in idx], pad)
            ids, mask = ids.to(device), mask.to(device)
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
            valid = mask[:, 1:].bool()
            nll = _token_nll(out.logits[:, :-1], ids[:, 1:], valid)
            layers = _layer_kv(out.past_key_values)
            for row, i in enumerate(idx):
                length = int(lengths[i])
                token_nll[i] = nll[row, : length - 1].double().cpu().numpy()
                kv[i] = [(k[row, :, :length], v[row, :, :length]) for k, v in layers]
            base_sums[idx] = nll.sum(dim=1).double().cpu().numpy()
            base_counts[idx] = valid.sum(dim=1).cpu().numpy()
        # 2. The variants: reuse the base's first `cached` positions, run the rest.
        plan = []  # (variant index, base index, cached positions, tokens to run)
        for v, (b, ids) in enumerate(variants):
            shared = _common_prefix(bases[b], ids)
            cached = max(shared - 1, 0)  # the last shared token is run again: its logits predict
            # the variant's first new token.
            # Tokens 1 .. cached are predicted from the shared prefix alone: the base's NLL.
            var_sums[v] = float(token_nll[b][:cached].sum())
            var_counts[v] = cached
            if len(ids) - cached > 1:  # something new to predict
                plan.append((v, b, cached, list(ids[cached:])))
        plan.sort(key=lambda p: -len(p[3]))
        for start in _batches(len(plan), batch_size, progress, "LM passes (variants)"):
            chunk = plan[start : start + batch_size]
            ids, new_mask = _padded([p[3] for p in chunk], pad)
            ids, new_mask = ids.to(device), new_mask.to(device)
            width = max(p[2] for p in chunk)
            cache_mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
            positions = torch.arange(ids.shape[1], device=device).expand(len(chunk), -1).clone()
            past = None
            if width:
                layer_kv = []
                for layer, (k0, v0) in enumerate(kv[chunk[0][1]]):
                    keys = k0.new_zeros((len(chunk), k0.shape[0], width, k0.shape[-1]))
                    values = v0.new_zeros((len(chunk), v0.shape[0], width, v0.shape[-1]))
                    for row, (_, b, cached, _) in enumerate(chunk):
                        keys[row, :, :cached] = kv[b][layer][0][:, :cached]
                        values[row, :, :cached] = kv[b][layer][1][:, :cached]
                    layer_kv.append((keys, values))
                past = DynamicCache(ddp_cache_data=layer_kv, config=model.config)
                for row, (_, _, cached, _) in enumerate(chunk):
                    cache_mask[row, :cached] = 1
                    positions[row] += cached
            mask = torch.cat([cache_mask, new_mask], dim=1)
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_argument(model): past},
            )
            valid = new_mask[:, 1:].bool()
            nll = _token_nll(out.logits[:, :-1], ids[:, 1:], valid)
            sums = nll.sum(dim=1).double().cpu().numpy()
            counts = valid.sum(dim=1).cpu().numpy()
            for row, (v, _, _, _) in enumerate(chunk):
                var_sums[v] += sums[row]
                var_counts[v] += counts[row]
    return base_sums, base_counts, var_sums, var_counts
