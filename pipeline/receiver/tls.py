"""HEP over TLS: the server context (loaded once, at start) and failed-handshake counting.

The TLS listeners are TCP listeners with `ssl=` on `loop.create_server`: the event loop
(uvloop or asyncio) runs the handshake and the same `TcpConnection` protocol frames the
decrypted stream. A failed handshake never reaches that protocol (asyncio and uvloop
only log it at debug level), so the context's `sslobject_class` (the documented hook
for what `SSLContext.wrap_bio` returns, which both loops call) is replaced by a
subclass whose `do_handshake` reports each SSL error before re-raising it.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable

from pipeline.observability import get_logger
from pipeline.receiver.metrics import ReceiverMetrics

log = get_logger("pipeline.receiver.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
HANDSHAKE_FAILED = "tls_handshake"  # hep_ingest_tcp_connections_closed_total{reason}


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TlsConfigError("the private key is encrypted; give an unencrypted key file")


def load_server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS >= 1.2 server context; with `client_ca`, clients must present a certificate
    it signed (mutual TLS). Raises TlsConfigError naming the file that is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except TlsConfigError:
        raise
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load the TLS certificate {cert!r} and key {key!r}: {_describe(exc)}"
        ) from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"cannot load the TLS client CA {client_ca!r}: {_describe(exc)}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return "the key does not belong to the certificate (KEY_VALUES_MISMATCH)"
        return getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def report_handshake_failures(
    context: ssl.SSLContext, on_failure: Callable[[ssl.SSLError], None]
) -> None:
    """Make every connection of `context` call `on_failure` when its handshake fails.

    Mutates `context` (its `sslobject_class`); the last call wins.
    """

    class HandshakeReportingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # the handshake goes on when more bytes arrive
            except ssl.SSLError as exc:
                with contextlib.suppress(Exception):  # counting must not change the outcome
                    on_failure(exc)
                raise

    context.sslobject_class = HandshakeReportingSSLObject


class HandshakeFailures:
    """Counts failed handshakes and logs a sample: the first, then at most one per interval.

    A plaintext agent pointed at the TLS port, or one without the client certificate,
    fails on every reconnect: counting each is useful, logging each is not.
    """

    def __init__(
        self,
        metrics: ReceiverMetrics,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._last_logged: float | None = None
        self._not_logged = 0
        metrics.tcp_connections_closed[HANDSHAKE_FAILED] += 0  # exported from the start

    def __call__(self, exc: ssl.SSLError) -> None:
        self._metrics.tcp_connections_closed[HANDSHAKE_FAILED] += 1
        self._not_logged += 1
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < self._interval_s:
            return
        log.warning(
            "tls_handshake_failed",
            reason=getattr(exc, "reason", None) or type(exc).__name__,
            error=str(exc)[:300],
            failures_since_last_sample=self._not_logged,
            hint="a plaintext sender on the TLS port, a client certificate missing or "
            "not signed by --tls-client-ca, or a client that does not trust the server "
            "certificate",
        )
        self._last_logged = now
        self._not_logged = 0
