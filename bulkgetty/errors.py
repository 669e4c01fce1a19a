"""One error tree for the whole package.

    BulkGettyError                 base; `retryable`, `may_have_spent`, `exit_code`
    ├── UsageError                 bad options, missing credentials: exit 2, nothing spent
    │   └── ManifestError          every bad row, as FILE:LINE: problem
    ├── ApiError                   the Getty API answered with an error status
    │   ├── AuthenticationError    key, secret, password or token refused
    │   ├── QuotaExceededError     403 OverageLimitReached: stop acquiring for that product
    │   ├── RateLimitedError       429 (or legacy 403 + X-Error-Detail): slow down, retry
    │   ├── NotFoundError          404 ImageNotFound / VideoNotFound / FileDownloadSizeNotFound
    │   └── ServerError            5xx: retryable for reads; a POST may have spent
    ├── TransportError             no usable HTTP answer
    │   ├── ConnectError           the request never left: always safe to retry
    │   ├── CertificateError       the host's TLS certificate is not trusted: exit 2
    │   ├── ReadError              sent, then lost or timed out: a POST may have spent
    │   └── ApiUnreachableError    the API could not be reached before anything was spent: exit 2
    ├── DeliveryError              the delivery host or its bytes are wrong
    │   ├── UriExpiredError        signature refused / URI past its 24 h
    │   ├── IntegrityError         length, Content-Range, validator or content type mismatch
    │   └── RedirectError          loop, too many hops, refused scheme
    ├── StorageError               the output folder: disk full, permissions, unsafe path
    │   └── DiskFullError          no space (ENOSPC, EDQUOT, SQLITE_FULL): the whole run stops
    └── JournalError               the journal is locked by another run, or inconsistent

Why the flags live on the error: one retry policy (retry.py) decides from them alone, and
the acquire stage must tell "may have spent a licensed download" apart from "certainly did not"
before it ever repeats a POST.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = (
    "ApiError",
    "ApiUnreachableError",
    "AuthenticationError",
    "BulkGettyError",
    "CertificateError",
    "ConnectError",
    "DeliveryError",
    "DiskFullError",
    "IntegrityError",
    "JournalError",
    "ManifestError",
    "ManifestProblem",
    "NotFoundError",
    "QuotaExceededError",
    "RateLimitedError",
    "ReadError",
    "RedirectError",
    "ServerError",
    "StorageError",
    "TransportError",
    "UriExpiredError",
    "UsageError",
)


class BulkGettyError(Exception):
    """Base of every error bulkgetty raises on purpose."""

    #: Trying the same request again later may succeed.
    retryable: bool = False
    #: Exit status of `bulkgetty run` when this error stops the whole run.
    exit_code: int = 1

    def __init__(self, message: str, *, may_have_spent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        #: A download POST may have been charged although no URI came back.
        self.may_have_spent = may_have_spent

    def __str__(self) -> str:
        return self.message


class UsageError(BulkGettyError):
    """The run cannot start: bad options, no credentials. Nothing was spent."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One bad row: where it is and what is wrong with it."""

    file: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


class ManifestError(UsageError):
    """A manifest could not be read, or has bad rows; lists every one of them."""

    def __init__(self, problems: Sequence[ManifestProblem], *, total: int | None = None) -> None:
        self.problems = tuple(problems)
        count = total if total is not None else len(self.problems)
        lines = [str(p) for p in self.problems]
        if count > len(self.problems):
            lines.append(f"... and {count - len(self.problems)} more bad rows")
        super().__init__("\n".join(lines) if lines else "bad manifest")


class ApiError(BulkGettyError):
    """The Getty API answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        may_have_spent: bool = False,
    ) -> None:
        super().__init__(message, may_have_spent=may_have_spent)
        self.status = status
        #: Getty's `ErrorCode`, the OAuth `error`, or None for gateway errors.
        self.code = code


class AuthenticationError(ApiError):
    """The API refused the key, the secret, the user's password or the token."""

    exit_code = 2


class QuotaExceededError(ApiError):
    """The product's download limit (and overage) is exhausted."""

    exit_code = 3


class RateLimitedError(ApiError):
    """Too many queries per second for this API key."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class NotFoundError(ApiError):
    """The asset, or the asked size of it, does not exist."""


class ServerError(ApiError):
    """A 5xx from the API. Retrying a read is safe; a POST may have spent."""

    retryable = True


class TransportError(BulkGettyError):
    """No usable HTTP answer came back."""

    retryable = True


class ConnectError(TransportError):
    """The connection failed before the request was sent: nothing can have been spent."""


class CertificateError(TransportError):
    """The host's TLS certificate failed verification: the request never left.

    Not retried (the certificate will not change within a run) and not a ConnectError, so a
    spending POST is not repeated on it either; bulkgetty never turns verification off.
    """

    retryable = False
    exit_code = 2


class ReadError(TransportError):
    """The request was sent, then the answer was lost or timed out."""


class ApiUnreachableError(TransportError):
    """Every try to connect to the API failed before this run spent anything: the run could
    not start. Not retryable: it is what the retries ended in (connect.ConnectWatch)."""

    retryable = False
    exit_code = 2


class DeliveryError(BulkGettyError):
    """The delivery host answered wrongly, or its bytes do not check out."""

    retryable = True


class UriExpiredError(DeliveryError):
    """The signed delivery URI was refused: re-acquiring it spends another download."""

    retryable = False


class IntegrityError(DeliveryError):
    """The body's length, range, validator or content type is not what was promised."""


class RedirectError(DeliveryError):
    """A redirect loop, too many hops, or a scheme or host we refuse to follow."""

    retryable = False


class StorageError(BulkGettyError):
    """The output folder cannot take the file: disk full, read-only, unsafe path."""


class DiskFullError(StorageError):
    """The output folder's filesystem is full: every other asset would fail the same way
    (after being bought), so the run stops; the journal and the `.part` files stay."""


class JournalError(BulkGettyError):
    """The journal is held by another run, or does not match this run."""

    exit_code = 2
