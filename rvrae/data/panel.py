"""The Panel type, chronological splits and the robustness omission (SPEC §2.2–2.3).

A Panel holds dense arrays over the union of stocks and *all* months, plus `months`: the
target months this view covers. Train / valid / test views share the same arrays (no copy),
so sequence windows can always look back into earlier months; only `months` and, for
omission, `mask` differ between views.

Alignment convention (SPEC §2.1, `same_row`): `chars[t]` is known before `ret[t]` is
realised. A model forecasting month t may use `chars[..t]`, `ret[..t-1]` and `mask[..t-1]`;
`ret[t]` (and `mask[t]`) only as the training target or for the posterior / realised factor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from rvrae.errors import UserError


@dataclass(frozen=True, eq=False)
class Panel:
    chars: np.ndarray  # [T, N, C] float32, monthly ranks in [-1, 1]; missing -> 0
    ret: np.ndarray  # [T, N] float32, 0 where mask is False
    mask: np.ndarray  # [T, N] bool, the stock has a return that month (and is in this view)
    dates: np.ndarray  # [T] datetime64[M]
    ids: np.ndarray  # [N] str
    char_names: tuple[str, ...]
    months: np.ndarray | None = None  # [t] int, target months of this view; None = all
    source: str = ""  # where it came from (file path or "synthetic(...)"), for provenance
    meta: dict = field(default_factory=dict)  # e.g. the synthetic oracle

    @classmethod
    def from_arrays(
        cls, chars: np.ndarray, ret: np.ndarray, mask: np.ndarray, source: str = "arrays",
        start: str = "2000-01",
    ) -> Panel:
        """A panel from preprocessed arrays (tests, benchmarks, users with their own
        pipeline): ret is zeroed where mask is False; months start at `start`; ids s0.. and
        characteristic names c0.. are generated."""
        T, N, C = chars.shape
        mask = np.asarray(mask, dtype=bool)
        return cls(
            chars=np.asarray(chars, dtype=np.float32),
            ret=np.where(mask, ret, 0).astype(np.float32), mask=mask,
            dates=np.datetime64(start, "M") + np.arange(T),
            ids=np.array([f"s{i}" for i in range(N)]), char_names=tuple(f"c{i}" for i in range(C)),
            source=source,
        )

    @property
    def T(self) -> int:
        return self.chars.shape[0]

    @property
    def N(self) -> int:
        return self.chars.shape[1]

    @property
    def C(self) -> int:
        return self.chars.shape[2]

    @property
    def target_months(self) -> np.ndarray:
        return np.arange(self.T) if self.months is None else self.months

    def view(self, months: np.ndarray | None = None, drop: np.ndarray | None = None) -> Panel:
        """A view on the same arrays with other target months and/or stocks removed.

        `drop` ([k] stock indices) removes those stocks from the view in every month (their
        mask is False), as the robustness omission requires for train and valid.
        """
        mask = self.mask
        if drop is not None and len(drop):
            mask = mask.copy()
            mask[:, drop] = False
        return replace(
            self,
            months=None if months is None else np.asarray(months, dtype=np.int64),
            mask=mask,
        )

    def with_squares(self) -> Panel:
        """The panel with each characteristic's squared rank, centred each month, as one more
        column (`--squares`: C -> 2C, names "x" then "x^2"; `rvrae.data.prep.squared_ranks`).
        Every model reads them as characteristics, and the managed portfolios of CA, IPCA and
        RVRAE's encoder get one more portfolio per characteristic. Its source says so, and its
        fingerprint differs, so a results folder never mixes its rows with the plain panel's."""
        from rvrae.data.prep import squared_ranks

        if self.meta.get("squares"):
            raise UserError(f"{self.source or 'panel'}: already has its squared ranks")
        return replace(
            self,
            chars=np.concatenate([self.chars, squared_ranks(self.chars, self.mask)], axis=-1),
            char_names=self.char_names + tuple(f"{c}^2" for c in self.char_names),
            source=f"{self.source} +squares",
            meta={**self.meta, "squares": True},
        )

    def fingerprint(self) -> str:
        """A short hash of the data, stored with every results row."""
        h = hashlib.sha256()
        for a in (self.chars, self.ret, self.mask, self.dates.astype("int64")):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("|".join(map(str, self.ids)).encode())
        return h.hexdigest()[:16]


def split_by_years(
    panel: Panel, train: int = 15, valid: int = 3, test: int = 3
) -> tuple[Panel, Panel, Panel]:
    """Chronological train / valid / test views (SPEC §2.3; paper default 15 / 3 / 3 years).

    The split is anchored at the end of the panel: test = the last `test` years, valid the
    `valid` years before, train the `train` years before that. Earlier months, if any, stay
    available as window history but are never targets.
    """
    need = 12 * (train + valid + test)
    if min(train, valid, test) <= 0:
        raise UserError(f"split years must be positive, got {train}/{valid}/{test}")
    if panel.T < need:
        raise UserError(
            f"{panel.source or 'panel'}: {panel.T} months, but the {train}/{valid}/{test}-year "
            f"split needs {need}"
        )
    end = panel.T
    te = np.arange(end - 12 * test, end)
    va = np.arange(te[0] - 12 * valid, te[0])
    tr = np.arange(va[0] - 12 * train, va[0])
    return panel.view(tr), panel.view(va), panel.view(te)


def eligible_for_omission(train: Panel, test: Panel) -> np.ndarray:
    """Stocks with at least one training month and at least one test month (SPEC §2.3)."""
    in_train = train.mask[train.target_months].any(axis=0)
    in_test = test.mask[test.target_months].any(axis=0)
    return np.flatnonzero(in_train & in_test)


def omit_stocks(train: Panel, test: Panel, m: int, seed: int) -> np.ndarray:
    """The m stocks left out of training for seed `seed` (SPEC §2.3).

    Depends only on (seed, m, panel), never on the model. The sets are nested in m for a
    given seed (a seeded permutation, then the first m), so m = 50 ⊂ m = 100 ⊂ m = 150.
    """
    if m < 0:
        raise UserError(f"m must be >= 0, got {m}")
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    eligible = eligible_for_omission(train, test)
    if m >= len(eligible):
        raise UserError(
            f"m = {m} omitted stocks, but only {len(eligible)} stocks have both a training "
            f"and a test month (m must be smaller)"
        )
    order = np.random.default_rng(seed).permutation(len(eligible))
    return np.sort(eligible[order[:m]])


def window_months(months: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Month indices of each target month's window, computed on the fly (never materialised
    over the panel): `idx [B, seq_len]` = t-seq_len+1 .. t clamped at 0, and `valid [B,
    seq_len]` False where the window runs before the first month (callers zero those)."""
    offs = np.arange(-seq_len + 1, 1)
    raw = np.asarray(months)[:, None] + offs[None, :]
    return np.clip(raw, 0, None), raw >= 0
