"""bulkgetty: bulk downloads from the Getty Images / iStock API, quota-exact and resumable.

The CLI is a thin layer over this API:

    async with Downloader(Credentials.from_env(), RunOptions(out_dir=Path("out"))) as d:
        result = await d.run(assets)
"""

from .assets import PRODUCT_TYPES, Asset, AssetType
from .auth import Credentials
from .config import DEFAULT_API_URL, RunOptions
from .engine import Downloader, RunResult, run
from .errors import (
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
from .events import (
    AssetAcquired,
    AssetDone,
    AssetFailed,
    AssetWaiting,
    Event,
    Progress,
    QuotaReached,
    RunFinished,
    RunStarted,
)
from .manifest import ManifestDefaults, ManifestRow, read_manifest, validate_manifest
from .report import RunSummary, Status

__version__ = "0.1.0"

__all__ = (
    "DEFAULT_API_URL",
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
    "IntegrityError",
    "JournalError",
    "ManifestDefaults",
    "ManifestError",
    "ManifestProblem",
    "ManifestRow",
    "NotFoundError",
    "Progress",
    "QuotaExceededError",
    "QuotaReached",
    "RateLimitedError",
    "ReadError",
    "RedirectError",
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
    "read_manifest",
    "run",
    "validate_manifest",
)
