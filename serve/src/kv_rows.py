"""Row storage for KV caches whose rows join and leave a running batch.

A cache tensor here is a store [capacity, heads, max_length, dim] whose first ``rows``
rows are live; the runners attend over the live view ``store[:rows]``. A row that leaves
is overwritten by the rows after it, and a joining row is copied into the next free
slot. Both copy only the moved rows, and only up to their lengths, so admitting a
request into a batch of long rows no longer copies every running row's cache (which a
``torch.cat`` of the whole batch did, for each admission and each departure).
"""

from __future__ import annotations

import torch


def keep_rows(stores: list[torch.Tensor], rows: list[int], lengths: list[int]) -> None:
    """Keep the live rows ``rows`` (indices into the live rows, in their new order) at
    the front of every store. ``lengths`` are the tokens each live row holds now."""
    first = next((i for i, row in enumerate(rows) if row != i), len(rows))
    if first == len(rows):  # the kept rows are a prefix: nothing moves
        return
    moved = rows[first:]
    span = max(lengths[row] for row in moved)
    if span == 0:
        return
    index = torch.tensor(moved, device=stores[0].device)
    for store in stores:
        # index_select makes a copy, so sources and destinations may overlap.
        store[first: len(rows), :, :span] = store[:, :, :span].index_select(0, index)


def add_rows(stores: list[torch.Tensor], live: int, others: list[torch.Tensor],
             other_lengths: list[int]) -> list[torch.Tensor]:
    """Copy the rows of ``others`` (one tensor per store, [n, heads, length, dim]) into
    the slots after the ``live`` rows; returns the stores, grown first where the new rows
    do not fit (capacity doubles, the length becomes what the new rows' caches have)."""
    count, length = others[0].shape[0], others[0].shape[2]
    capacity = stores[0].shape[0]
    if live + count > capacity or length > stores[0].shape[2]:
        rows = max(live + count, 2 * capacity) if live + count > capacity else capacity
        stores = [regrown(store, live, rows, max(length, store.shape[2])) for store in stores]
    span = max(other_lengths, default=0)
    for store, other in zip(stores, others):
        store[live: live + count, :, :span] = other[:, :, :span]
    return stores


def grow_length(stores: list[torch.Tensor], live: int, needed: int) -> list[torch.Tensor]:
    """The stores with room for ``needed`` positions (at least double, as this is rare:
    a row past its budget that still drafts along with the batch)."""
    length = max(needed, 2 * stores[0].shape[2])
    return [regrown(store, live, store.shape[0], length) for store in stores]


def regrown(store: torch.Tensor, live: int, rows: int, length: int) -> torch.Tensor:
    """A new store of ``rows`` x ``length`` holding ``store``'s live rows."""
    grown = store.new_zeros(rows, store.shape[1], length, store.shape[3])
    grown[:live, :, : store.shape[2]] = store[:live]
    return grown


def fewest_moves(kept: list[int]) -> list[int]:
    """An order of the ``kept`` rows (increasing indices) for ``keep_rows`` that moves
    the fewest: a row already in the first ``len(kept)`` slots stays, and the rows past
    them fill the slots of the rows that left."""
    size = len(kept)
    movers = iter(row for row in kept if row >= size)
    staying = {row for row in kept if row < size}
    return [slot if slot in staying else next(movers) for slot in range(size)]
