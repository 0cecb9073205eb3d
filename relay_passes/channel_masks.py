"""Channel masks: which channels of each coupled group to keep, how to choose them, on disk.

A mask is one boolean vector per channel group of `channel_graph.analyze` (True: keep).
Criteria (pure numpy, given per-channel evidence):

* ``l1`` / ``l2``  filter magnitude: the norm of every producer row of the channel,
  summed over the coupled producers (Li et al., "Pruning Filters for Efficient ConvNets").
* ``activation``   mean absolute activation the consumers read on calibration data.
* ``greedy``       reconstruction-aware: remove, one at a time, the channel whose removal
  changes the consumers' outputs least (ThiNet, Luo et al. 2017), on sampled outputs.
* ``redundancy``   compensation-aware: remove, one at a time, the channel whose removal
  raises least the error left *after* the best compensation from the kept channels
  (`redundancy_keep`: the Optimal Brain Surgeon cost, a Schur complement), so of two
  channels that carry the same information one goes first.
* ``refit``        least-squares-aware: the same greedy removal, scored by the error left
  after each consumer's least-squares refit on all its input columns (`refit_select`).

A group whose channels feed out of a grouped conv comes in equal *blocks* (one per conv
group, `ChannelGroup.blocks`); every criterion then keeps the same number in each block.

Masks save to an ``.npz`` with the channel counts, so a run can be reproduced and a mask
made for another model is refused with the group that does not fit.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np

from mdl_tvm.core.io import atomic_output


def block_ids(count: int, blocks: int) -> np.ndarray:
    """The block of each of `count` channels cut into `blocks` equal runs."""
    if blocks < 1 or count % blocks:
        raise ValueError(f"{count} channels do not split into {blocks} equal blocks")
    return np.arange(count) // (count // blocks)


def keep_top(scores: np.ndarray, k: int, blocks: int = 1) -> np.ndarray:
    """Boolean mask keeping the `k` highest scores (ties: the lower index), ``k / blocks``
    in each of `blocks` equal runs."""
    scores = np.asarray(scores, np.float64)
    ids = block_ids(len(scores), blocks)
    mask = np.zeros(len(scores), bool)
    for b in range(blocks):
        members = np.flatnonzero(ids == b)
        order = np.argsort(-scores[members], kind="stable")[:k // blocks]
        mask[members[order]] = True
    return mask


def open_blocks(keep: np.ndarray, ids: np.ndarray, floor: int) -> np.ndarray:
    """Per channel: may it go, its block keeping more than `floor` channels?"""
    return np.bincount(ids[keep], minlength=ids.max() + 1)[ids] > floor


def magnitude_scores(rows: list[np.ndarray], p: int) -> np.ndarray:
    """Per-channel ``sum_i ||rows_i[c]||_p`` with each producer normalised by its mean."""
    total = 0.0
    for r in rows:
        norms = np.linalg.norm(r, ord=p, axis=1)
        total = total + norms / max(float(norms.mean()), 1e-12)
    return np.asarray(total)


def greedy_keep(contributions: np.ndarray, k: int, blocks: int = 1) -> np.ndarray:
    """ThiNet's greedy selection. `contributions` is ``(C, M)``: channel c's share of M
    sampled consumer outputs. Channels are removed one by one, each time the one that
    keeps ``|| sum of removed contributions ||`` smallest (from blocks still above
    ``k / blocks``); returns the keep mask."""
    c = len(contributions)
    ids = block_ids(c, blocks)
    removed = np.zeros(c, bool)
    acc = np.zeros(contributions.shape[1])
    for _ in range(c - k):
        cost = ((acc[None, :] + contributions) ** 2).sum(axis=1)
        cost[removed | ~open_blocks(~removed, ids, k // blocks)] = np.inf
        pick = int(np.argmin(cost))
        removed[pick] = True
        acc += contributions[pick]
    return ~removed


def redundancy_keep(terms, k: int, compensated: bool = True, blocks: int = 1) -> np.ndarray:
    """Greedy backward selection by the error left after compensation.

    `terms` holds one ``(H, X, AA, Q)`` per consumer: ``H = ZᵀZ`` the current channels'
    pixel Gram, ``X = ZᵀA`` with the original channels, ``AA = AᵀA``, and ``Q`` the
    consumer's channel weight Gram (`channel_stats.consumer_gram`). The cost of keeping K is
    ``sum_c tr(Q_c (AA_c − X_Kᵀ H_KK⁻¹ X_K)) / tr(Q_c AA_c)``; removing channel j from K
    raises it by ``uᵀ Q u / h_jj`` with ``u = X_Kᵀ H_KK⁻¹ e_j`` (a rank-one downdate), so each
    step is cheap. ``compensated=False`` scores channels by ``Q_jj AA_jj`` alone (no
    compensation: for sites with fewer rows than the regression needs). With `blocks`,
    only channels of blocks keeping more than ``k / blocks`` may go.
    """
    count = len(terms[0][0])
    if not compensated:
        score = sum(np.diag(q) * np.diag(aa) / max(float(np.trace(q @ aa)), 1e-300)
                    for _, _, aa, q in terms)
        return keep_top(np.asarray(score), k, blocks)
    keep = np.ones(count, bool)
    keep[redundancy_path(terms, count - k, blocks)[0]] = False
    return keep


def redundancy_path(terms, steps: int | None = None,
                    blocks: int = 1) -> tuple[list[int], np.ndarray]:
    """``(removed, increments)``: the channels `redundancy_keep` removes, in order, and
    what each removal adds to the cost (`steps` removals; None: all but one channel per
    block), each block of `blocks` ending with the same count.

    The increments are the group's removal curve for a MACs budget (`macs_budget`)."""
    count = len(terms[0][0])
    ids = block_ids(count, blocks)
    steps = count - blocks if steps is None else steps
    floor = (count - steps) // blocks
    keep, removed, increments = np.ones(count, bool), [], []
    state = []
    for h, x, aa, q in terms:
        eps = 1e-9 * max(float(np.trace(h)) / count, 1e-300)
        state.append([np.linalg.inv(h + eps * np.eye(count)), x, q,
                      max(float(np.trace(q @ aa)), 1e-300)])
    for _ in range(steps):
        kept = np.flatnonzero(keep)
        cost = np.zeros(len(kept))
        for hinv, x, q, norm in state:
            u = x[kept].T @ hinv  # (C, k): column j is X_Kᵀ H_KK⁻¹ e_j
            # 1 / diag(H_KK⁻¹) is the part of a channel the others cannot reproduce; where
            # it is huge the cost overflows to inf, and that channel is kept
            with np.errstate(over="ignore"):
                cost += (np.einsum("cj,cd,dj->j", u, q, u)
                         / np.maximum(np.diag(hinv), 1e-300) / norm)
        cost[~open_blocks(keep, ids, floor)[kept]] = np.inf
        j = int(np.argmin(cost))
        for entry in state:
            hinv = entry[0]
            rest = np.delete(np.arange(len(kept)), j)
            col = hinv[rest, j]
            entry[0] = hinv[np.ix_(rest, rest)] - np.outer(col, col) / hinv[j, j]
        keep[kept[j]] = False
        removed.append(int(kept[j]))
        increments.append(float(cost[j]))
    return removed, np.asarray(increments)


def sampled_contributions(rows: np.ndarray, weight: np.ndarray, columns: np.ndarray,
                          seed: int) -> np.ndarray:
    """``(C, M)``: each channel's contribution to one random output channel per row.

    `rows` ``(M, D)`` consumer inputs, `weight` ``(O, D)``, `columns` ``(C, B)`` the
    input columns of each channel."""
    rng = np.random.default_rng(seed)
    outs = rng.integers(0, weight.shape[0], size=len(rows))
    w = weight[outs]  # (M, D)
    return np.stack([(rows[:, cols] * w[:, cols]).sum(axis=1) for cols in columns])


class ChannelMasks(dict):
    """``{group name: bool array}`` with disk round trip."""

    def save(self, path: str) -> str:
        """Write atomically to `path` (``.npz``)."""
        meta = {name: int(mask.size) for name, mask in self.items()}
        with atomic_output(path, suffix=".npz") as tmp:
            np.savez(tmp, __meta__=np.array(json.dumps(meta)),
                     **{name: np.asarray(m, bool) for name, m in self.items()})
        return path

    @classmethod
    def load(cls, path: str) -> ChannelMasks:
        try:
            with np.load(path, allow_pickle=False) as data:
                json.loads(str(data["__meta__"]))
                return cls({k: data[k].astype(bool) for k in data.files if k != "__meta__"})
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path!r} is not a MobileDL channel-mask file ({err}); save one "
                             "with ChannelMasks.save or MaskPruning(...).masks.save") from None

    def check(self, groups: dict) -> None:
        """Raise ValueError when a mask does not fit the model's channel groups."""
        for name, mask in self.items():
            if name not in groups:
                raise ValueError(f"mask for unknown channel group {name!r}; this model's "
                                 f"groups are: {', '.join(groups)}")
            if mask.size != groups[name].channels:
                raise ValueError(f"mask for {name!r} has {mask.size} channels but the model's "
                                 f"group has {groups[name].channels}: made for another model?")
            if not mask.any():
                raise ValueError(f"mask for {name!r} keeps no channel; keep at least one")
            blocks = groups[name].blocks
            counts = np.bincount(block_ids(mask.size, blocks)[mask], minlength=blocks)
            if blocks > 1 and len(set(counts.tolist())) > 1:
                raise ValueError(f"mask for {name!r} keeps {counts.tolist()} channels in the "
                                 f"{blocks} groups of its grouped conv; a grouped conv needs "
                                 "the same count in every group (choose per group)")
