"""bulkgetty: bulk downloads from the Getty Images / iStock API, quota-exact and resumable.

The CLI is a thin layer over this API (`plan`: `estimate`; `status`: `journal_status`;
`history`/`search`: `history_to_manifest`/`search_to_manifest` on an `open_client` client;
the terminal display: `RunDisplay`, one more listener of the events):

    async with Downloader(Credentials.from_env(), RunOptions(out_dir=Path("out"))) as d:
        result = await d.run(assets)
"""

from typing import TYPE_CHECKING, Any

from bulkgetty.assets import PRODUCT_TYPES, Asset, AssetType
from bulkgetty.commands.history import HistoryFilter, history_to_manifest
from bulkgetty.commands.plan import PlanEstimate, ProductPlan, estimate
from bulkgetty.commands.search import search_to_manifest
from bulkgetty.commands.status import JournalStatus, journal_status
from bulkgetty.config import DEFAULT_API_URL, RunOptions
from bulkgetty.errors import (
    ApiError,
    AuthenticationError,
    BulkGettyError,
    ConnectError,
    DeliveryError,
    DiskFullError,
    IntegrityError,
    JournalError,
    ManifestError,
    ManifestProblem,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    ReadError,
    RedirectError,
    ServerError,
    StorageError,
    TransportError,
    UriExpiredError,
    UsageError,
)
from bulkgetty.events import (
    EVENT_SCHEMA,
    EVENT_SCHEMA_VERSION,
    AssetAcquired,
    AssetDone,
    AssetFailed,
    AssetWaiting,
    Event,
    InFlight,
    Progress,
    QuotaReached,
    RunFinished,
    RunStarted,
)
from bulkgetty.getty.auth import Credentials
from bulkgetty.getty.connect import open_client
from bulkgetty.stages.engine import Downloader, RunResult, run
from bulkgetty.stages.manifest import (
    ManifestDefaults,
    ManifestRow,
    read_manifest,
    validate_manifest,
)
from bulkgetty.stages.report import RunSummary, Status
from bulkgetty.version import __version__ as __version__

__all__ = (
    "DEFAULT_API_URL",
    "EVENT_SCHEMA",
    "EVENT_SCHEMA_VERSION",
    "PRODUCT_TYPES",
    "ApiError",
    "Asset",
    "AssetAcquired",
    "AssetDone",
    "AssetFailed",
    "AssetType",
    "AssetWaiting",
    "AuthenticationError",
    "BulkGettyError",
    "ConnectError",
    "Credentials",
    "DeliveryError",
    "DiskFullError",
    "Downloader",
    "Event",
    "HistoryFilter",
    "InFlight",
    "IntegrityError",
    "JournalError",
    "JournalStatus",
    "ManifestDefaults",
    "ManifestError",
    "ManifestProblem",
    "ManifestRow",
    "NotFoundError",
    "PlanEstimate",
    "ProductPlan",
    "Progress",
    "QuotaExceededError",
    "QuotaReached",
    "RateLimitedError",
    "ReadError",
    "RedirectError",
    "RunDisplay",
    "RunFinished",
    "RunOptions",
    "RunResult",
    "RunStarted",
    "RunSummary",
    "ServerError",
    "Status",
    "StorageError",
    "TransportError",
    "UriExpiredError",
    "UsageError",
    "estimate",
    "history_to_manifest",
    "journal_status",
    "open_client",
    "read_manifest",
    "run",
    "search_to_manifest",
    "validate_manifest",
)

if TYPE_CHECKING:
    from bulkgetty.cli.progress import RunDisplay


def __getattr__(name: str) -> Any:
    """`RunDisplay` is imported on first use: rich costs ~80 ms of every start (issue 16),
    and a run with no terminal to draw on never needs it."""
    if name == "RunDisplay":
        from bulkgetty.cli.progress import RunDisplay

        return RunDisplay
    raise AttributeError(f"module 'bulkgetty' has no attribute {name!r}")
