"""Running the sandbox: three real aiohttp servers, in this loop or in a background thread."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from .api import build_api_app
from .config import SandboxConfig
from .content import Expected
from .delivery import build_delivery_app
from .state import SandboxState, SandboxStats, Spend
from .tls import TlsMaterial, make_tls

__all__ = ("Sandbox", "SandboxThread", "serve_forever")

#: Handlers still running at close (a hung POST, a stalled body) are cut off after this:
#: a test's teardown must not wait out a fault it injected.
SHUTDOWN_TIMEOUT = 0.25


class Sandbox:
    """An emulated Getty account: API origin plus two delivery origins on 127.0.0.1.

    With `tls=True` all three speak HTTPS with a certificate of a private CA made at start;
    `ca_file` is that CA's PEM, and `credentials_env()` carries it as `SSL_CERT_FILE`. A
    `TlsMaterial` instead of True is used as given (and left in place at close): the
    benchmarks share one CA between the sandbox and nginx.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool | TlsMaterial = False,
    ) -> None:
        self._state = SandboxState(config or SandboxConfig())
        self._host = host
        self._port = port
        self._tls_wanted = bool(tls)
        self._tls_given = tls if isinstance(tls, TlsMaterial) else None
        self._tls: TlsMaterial | None = None
        self._runners: list[web.AppRunner] = []
        self._delivery: list[str] = []
        self.api_url = ""

    # --- lifecycle ---

    async def start(self) -> None:
        if self._tls_wanted and self._tls is None:
            self._tls = self._tls_given or make_tls()
        try:
            await self._start_servers()
        except BaseException:
            await self.close()
            raise

    async def _start_servers(self) -> None:
        origins: list[str] = []
        for index in range(2):
            app = build_delivery_app(self._state, origins, index)
            origins.append(await self._bind(app, 0))
        self._delivery = origins
        self.api_url = await self._bind(build_api_app(self._state, origins), self._port)

    async def _bind(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runners.append(runner)
        ssl_context = self._tls.server_context if self._tls is not None else None
        site = web.TCPSite(runner, self._host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        bound_port = server.sockets[0].getsockname()[1]
        return f"{self.scheme}://{self._host}:{bound_port}"

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
        if self._tls is not None and self._tls_given is None:
            self._tls.remove()
        self._tls = None

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- state ---

    @property
    def scheme(self) -> str:
        return "https" if self._tls_wanted else "http"

    @property
    def ca_file(self) -> str | None:
        """The private CA's PEM while a TLS sandbox runs (what clients must trust)."""
        return str(self._tls.ca_file) if self._tls is not None else None

    @property
    def config(self) -> SandboxConfig:
        return self._state.config

    @property
    def delivery_urls(self) -> tuple[str, str]:
        return (self._delivery[0], self._delivery[1])

    @property
    def ledger(self) -> list[Spend]:
        return self._state.ledger

    @property
    def stats(self) -> SandboxStats:
        return self._state.stats

    @property
    def remaining(self) -> dict[int, int]:
        """Downloads remaining per product id."""
        return dict(self._state.remaining)

    def configure(self, **changes: Any) -> None:
        """Swap the config (dataclasses.replace semantics); new products reset the quota."""
        self._state.configure(**changes)

    def spends_by_asset(self) -> collections.Counter[str]:
        return self._state.spends_by_asset()

    def reset_quota(self) -> None:
        self._state.reset_quota()

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token this sandbox has issued (for leak scans)."""
        return list(self._state.issued_tokens)

    def revoke_access_tokens(self) -> int:
        """Make every issued access token stale: the next call with one gets 401."""
        return self._state.revoke_access_tokens()

    def expected(
        self,
        asset_type: str,
        id: str,
        *,
        height: int | None = None,
        size: str | None = None,
        file_type: str | None = None,
    ) -> Expected:
        return self._state.expected(asset_type, id, height=height, size=size, file_type=file_type)

    def credentials_env(self) -> dict[str, str]:
        """The exports a client needs; with TLS, `SSL_CERT_FILE` makes it trust the CA."""
        config = self.config
        env = {
            "GETTY_API_URL": self.api_url,
            "GETTY_API_KEY": config.api_key,
            "GETTY_API_SECRET": config.api_secret,
            "GETTY_USERNAME": config.username,
            "GETTY_PASSWORD": config.password,
        }
        if self.ca_file is not None:
            env["SSL_CERT_FILE"] = self.ca_file
        return env


class SandboxThread:
    """A Sandbox on its own loop in a daemon thread, for sync code and subprocess tests.

    Reads go straight to the sandbox's objects; mutations run on its loop.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
    ) -> None:
        self.sandbox = Sandbox(config, host=host, port=port, tls=tls)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        try:
            self._call(self.sandbox.start())
        except BaseException:
            self._stop_loop()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self.sandbox.close())
        self._stop_loop()

    def _call(self, coro: Any) -> Any:
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=30)

    def _run(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return self._call(call())

    def __enter__(self) -> SandboxThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def api_url(self) -> str:
        return self.sandbox.api_url

    @property
    def delivery_urls(self) -> tuple[str, str]:
        return self.sandbox.delivery_urls

    @property
    def ca_file(self) -> str | None:
        return self.sandbox.ca_file

    @property
    def config(self) -> SandboxConfig:
        return self.sandbox.config

    @property
    def ledger(self) -> list[Spend]:
        return list(self.sandbox.ledger)

    @property
    def stats(self) -> SandboxStats:
        return self.sandbox.stats

    @property
    def remaining(self) -> dict[int, int]:
        return self.sandbox.remaining

    def configure(self, **changes: Any) -> None:
        self._run(lambda: self.sandbox.configure(**changes))

    def spends_by_asset(self) -> collections.Counter[str]:
        result: collections.Counter[str] = self._run(self.sandbox.spends_by_asset)
        return result

    def reset_quota(self) -> None:
        self._run(self.sandbox.reset_quota)

    def issued_tokens(self) -> list[str]:
        tokens: list[str] = self._run(self.sandbox.issued_tokens)
        return tokens

    def revoke_access_tokens(self) -> int:
        revoked: int = self._run(self.sandbox.revoke_access_tokens)
        return revoked

    def expected(
        self,
        asset_type: str,
        id: str,
        *,
        height: int | None = None,
        size: str | None = None,
        file_type: str | None = None,
    ) -> Expected:
        return self.sandbox.expected(asset_type, id, height=height, size=size, file_type=file_type)

    def credentials_env(self) -> dict[str, str]:
        return self.sandbox.credentials_env()


async def serve_forever(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[Sandbox], None] | None = None,
    *,
    tls: bool = False,
) -> None:
    """Run a sandbox until cancelled; `on_ready` gets it once its URLs are known."""
    async with Sandbox(config, host=host, port=port, tls=tls) as sandbox:
        if on_ready is not None:
            on_ready(sandbox)
        await asyncio.Event().wait()
