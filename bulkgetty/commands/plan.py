"""`bulkgetty plan`: what a run would spend, per product type, against the account.

It tallies `decide` (stages/decide.py) over the manifest's journal records, the very
function `run` uses, so plan and run never disagree about what will be spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bulkgetty.assets import Asset
from bulkgetty.errors import ApiError, AuthenticationError
from bulkgetty.getty.api import GettyClient, ProductInfo
from bulkgetty.stages.decide import Action, decide
from bulkgetty.stages.journal import STATE_DIR, AssetState, Journal, Record

if TYPE_CHECKING:
    from bulkgetty.commands.history import Licensed

__all__ = (
    "DEFAULT_PRODUCT",
    "PlanEstimate",
    "ProductPlan",
    "estimate",
    "journal_records",
    "remaining_by_type",
    "remaining_quota",
)


# the plan command: what a run would spend, per product type ------------------------------

#: How rows naming no product_type are listed: Getty charges the key's default product.
DEFAULT_PRODUCT = "(default product)"


@dataclass(frozen=True, slots=True)
class ProductPlan:
    """One product type's share of a manifest, against what the account has left."""

    product_type: str
    assets: int = 0
    already_done: int = 0
    #: Bought before and the URI is still valid: transferred without spending.
    transfer_only: int = 0
    #: Will be bought (a POST each).
    to_acquire: int = 0
    #: A POST of an earlier run may have spent: resolved from the history, at most one spend.
    in_doubt: int = 0
    #: Bought before but the URI expired: fails unless `--reacquire-expired` (then it spends).
    needs_reacquire: int = 0
    #: Of those to buy, assets this account licensed before (its download history): each
    #: is bought, and spends, again.
    licensed_before: int = 0
    #: Downloads remaining on the account's active products of this type (None: unknown).
    remaining: int | None = None

    @property
    def may_spend(self) -> int:
        return self.to_acquire + self.in_doubt

    @property
    def fits(self) -> bool | None:
        if self.may_spend == 0:
            return True
        return None if self.remaining is None else self.may_spend <= self.remaining


@dataclass(frozen=True, slots=True)
class PlanEstimate:
    """What `run` would do with a manifest; computed by `decide`, exactly as `run` does."""

    products: tuple[ProductPlan, ...]
    max_downloads: int | None = None

    @property
    def may_spend(self) -> int:
        return sum(p.may_spend for p in self.products)

    @property
    def fits(self) -> bool | None:
        """True: every purchase fits; False: some would wait for quota; None: unknown."""
        if self.max_downloads is not None and self.may_spend > self.max_downloads:
            return False
        verdicts = [p.fits for p in self.products]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    def lines(self, title: str) -> list[str]:
        """The human table: one row per product type, then the verdict."""
        header = ["product type", "assets", "done", "transfer", "to buy", "in doubt"]
        header += ["expired", "licensed", "remaining", "fits"]
        rows = [header]
        for p in self.products:
            counts = (p.assets, p.already_done, p.transfer_only, p.to_acquire, p.in_doubt)
            counts_ = (*counts, p.needs_reacquire, p.licensed_before)
            remaining = "?" if p.remaining is None else str(p.remaining)
            fits = {True: "yes", False: "NO", None: "?"}[p.fits]
            rows.append([p.product_type, *map(str, counts_), remaining, fits])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [title]
        for r in rows:
            cells = [r[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
            lines.append("  " + "  ".join(cells))
        cap = "" if self.max_downloads is None else f" (--max-downloads {self.max_downloads})"
        verdict = {True: "the run fits", False: "some assets would wait for quota", None: "unknown"}
        lines.append(
            f"at most {self.may_spend} downloads would be spent{cap}: {verdict[self.fits]}"
        )
        return lines

    @property
    def licensed_before(self) -> int:
        return sum(p.licensed_before for p in self.products)

    def relicensing_note(self, licensed: Licensed) -> str | None:
        """One line when this plan buys assets the account licensed before, else None."""
        n = self.licensed_before
        if not n:
            return None
        noun, verb = ("asset", "was") if n == 1 else ("assets", "were")
        return (
            f"{n} {noun} of this manifest {verb} licensed before on this account "
            f"({licensed.describe()}): buying {'it' if n == 1 else 'them'} spends {n} more "
            f"download{'' if n == 1 else 's'} "
            "(every download request spends, as Getty documents)"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "products": [
                {**_plan_fields(p), "may_spend": p.may_spend, "fits": p.fits} for p in self.products
            ],
            "may_spend": self.may_spend,
            "max_downloads": self.max_downloads,
            "fits": self.fits,
        }


def _plan_fields(p: ProductPlan) -> dict[str, object]:
    return {name: getattr(p, name) for name in ProductPlan.__slots__}


def remaining_by_type(
    products: Iterable[ProductInfo],
) -> dict[str, int]:
    """Downloads (plus overage) left per product type, over active products."""
    left: dict[str, int] = {}
    for p in products:
        if p.status in (None, "active") and p.downloads_remaining is not None:
            left[p.type] = left.get(p.type, 0) + p.downloads_remaining + (p.overage_remaining or 0)
    return left


#: Answers of `/v3/products` that mean "not for this key", not "credentials refused".
PRODUCTS_NOT_FOR_THIS_KEY = frozenset(
    {"UserTokenRequired", "NoAgreement", "InsufficientPermissions"}
)


async def remaining_quota(client: GettyClient) -> tuple[dict[str, int] | None, str | None]:
    """(remaining per product type, None), or (None, why) when the key may not list products.

    `/v3/products` needs a user token (getty-api.md §6): a client_credentials key is refused
    with UserTokenRequired, and the plan is still worth showing without the remainders.
    Refused credentials (a bad key or secret) still raise.
    """
    try:
        return remaining_by_type(await client.products()), None
    except AuthenticationError as exc:
        if exc.code not in PRODUCTS_NOT_FOR_THIS_KEY:
            raise
        return None, str(exc)
    except ApiError as exc:
        return None, str(exc)


def estimate(
    records: Iterable[Record],
    *,
    now: float,
    out_dir: Path,
    remaining: Mapping[str, int] | None,
    reacquire_expired: bool = False,
    max_downloads: int | None = None,
    licensed: Licensed | None = None,
) -> PlanEstimate:
    """Tally `decide` over the manifest's journal records, per product type.

    Rows naming no product_type go to the key's default product, which the API does not name:
    when the account has one product type it is that one; otherwise they are checked against
    the smallest remainder of any type (if they fit there, they fit wherever they go).
    """
    tallies: dict[str, dict[str, int]] = {}
    for record in records:
        kind = record.asset.product_type or DEFAULT_PRODUCT
        t = tallies.setdefault(kind, dict.fromkeys(_COUNTERS, 0))
        t["assets"] += 1
        action = decide(record, now=now, out_dir=out_dir, reacquire_expired=reacquire_expired)
        t[_COUNTER_OF[action.action]] += 1
        if licensed is not None and action.action is Action.ACQUIRE and record.asset in licensed:
            t["licensed_before"] += 1
    plans = []
    for kind in sorted(tallies, key=lambda k: (k == DEFAULT_PRODUCT, k)):
        plans.append(ProductPlan(kind, **tallies[kind], remaining=_left(kind, remaining)))
    return PlanEstimate(tuple(plans), max_downloads)


_COUNTERS = (
    "assets",
    "already_done",
    "transfer_only",
    "to_acquire",
    "in_doubt",
    "needs_reacquire",
    "licensed_before",
)
_COUNTER_OF = {
    Action.ALREADY_DONE: "already_done",
    Action.TRANSFER: "transfer_only",
    Action.ACQUIRE: "to_acquire",
    Action.RESOLVE_DOUBT: "in_doubt",
    Action.FAIL: "needs_reacquire",
}


def _left(kind: str, remaining: Mapping[str, int] | None) -> int | None:
    if remaining is None:
        return None
    if kind != DEFAULT_PRODUCT:
        return remaining.get(kind, 0)
    return min(remaining.values()) if remaining else 0


def journal_records(out_dir: Path | None, assets: Iterable[Asset]) -> Iterator[Record]:
    """The journal's record for each asset (read-only, batched), or a fresh pending one.

    No journal (no `--out`, or a folder never run into) means nothing was done yet.
    """
    journal = None
    if out_dir is not None and (out_dir / STATE_DIR / "journal.sqlite").exists():
        journal = Journal(out_dir, read_only=True)
    try:
        batch: list[Asset] = []
        for asset in assets:
            batch.append(asset)
            if len(batch) >= 500:
                yield from _lookup(journal, batch)
                batch = []
        yield from _lookup(journal, batch)
    finally:
        if journal is not None:
            journal.close()


def _lookup(journal: Journal | None, batch: list[Asset]) -> Iterator[Record]:
    found = {r.key: r for r in journal.get_many([a.key for a in batch])} if journal else {}
    for asset in batch:
        yield found.get(asset.key) or Record(asset.key, asset, AssetState.PENDING)
