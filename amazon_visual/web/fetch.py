"""Fetching a query image from a URL for the service, without server-side request forgery.

:class:`UrlFetcher` follows redirects itself (a few hops) and, at every hop, takes only
``http``/``https``, resolves the host name once, refuses any address that is not a public
unicast one (loopback, private, link-local, multicast, reserved, shared, unspecified,
IPv4-mapped forms of these) unless the host or address is on the explicit allow-list, and
then connects to exactly that checked address (the name is not resolved again, so a DNS
answer cannot change between the check and the connection). The whole fetch has one
deadline (slow bodies time out) and the body has a size cap. Failures raise
:class:`FetchError` with the HTTP status the service answers (400, 403 or 413).
"""

import http.client
import ipaddress
import socket
import time
import urllib.parse

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 10 << 20
MAX_REDIRECTS = 3
CHUNK = 64 << 10


class FetchError(Exception):
    """A URL that cannot or may not be fetched; ``status`` is the HTTP status to answer with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def is_public_address(ip):
    """True for a global unicast address (what a URL query may reach without the allow-list)."""
    ip = ipaddress.ip_address(ip)
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified
    )


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to one already checked address (the Host header keeps the name)."""

    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        self.sock = self.pinned_sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to one already checked address; the certificate is checked against the name."""

    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self.pinned_sock = self._context.wrap_socket(sock, server_hostname=self.host)


class UrlFetcher:
    """``fetch(url) -> bytes`` under the rules above.

    ``allow_hosts``: host names or IP addresses that may be reached even when they are not
    public (e.g. ``["127.0.0.1"]`` for a test's own image server); empty by default.
    """

    def __init__(
        self, allow_hosts=(), timeout=DEFAULT_TIMEOUT, max_bytes=DEFAULT_MAX_BYTES, max_redirects=MAX_REDIRECTS
    ):
        self.allow_hosts = {str(h).strip().lower().strip("[]") for h in allow_hosts if str(h).strip()}
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.max_redirects = int(max_redirects)

    def fetch(self, url):
        deadline = time.monotonic() + self.timeout
        for _ in range(self.max_redirects + 1):
            parts = self._check_url(url)
            ip = self._resolve(parts)
            status, location, body = self._get(parts, ip, deadline)
            if status in (301, 302, 303, 307, 308):
                if not location:
                    raise FetchError(400, f"{_short(url)} redirects without a Location: pass the image's own URL")
                url = urllib.parse.urljoin(url, location)
                continue
            if status != 200:
                raise FetchError(400, f"{_short(url)} answered HTTP {status}: check the URL")
            return body
        raise FetchError(400, f"{_short(url)} redirects more than {self.max_redirects} times: pass the image's own URL")

    # ------------------------------------------------------------------ steps
    def _check_url(self, url):
        try:
            parts = urllib.parse.urlsplit(str(url).strip())
            port = parts.port
        except ValueError:
            raise FetchError(400, f"{_short(url)} is not a valid URL") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise FetchError(400, f"{_short(url)}: only http and https URLs can be fetched")
        if not parts.hostname:
            raise FetchError(400, f"{_short(url)} has no host name")
        return parts._replace(scheme=parts.scheme.lower()), port

    def _resolve(self, checked):
        parts, port = checked
        host = parts.hostname.lower()
        port = port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError) as e:
            raise FetchError(400, f"host {host} cannot be resolved ({e}): check the URL") from None
        ips = [info[4][0] for info in infos]
        if host in self.allow_hosts:
            return ips[0]
        for ip in ips:
            if not (is_public_address(ip) or ip.lower() in self.allow_hosts):
                raise FetchError(
                    403,
                    f"host {host} resolves to {ip}, an address the service may not fetch from "
                    "(loopback, private, link-local, multicast or reserved)",
                )
        return ips[0]

    def _get(self, checked, ip, deadline):
        parts, port = checked
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(400, f"fetching {parts.hostname} timed out after {self.timeout:g} s")
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = cls(parts.hostname, port, ip, timeout=remaining)
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            conn.request("GET", path, headers={"User-Agent": "amazon-visual", "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status != 200:
                return resp.status, resp.getheader("Location"), b""
            return 200, None, self._read(resp, conn, parts.hostname, deadline)
        except TimeoutError:
            raise FetchError(400, f"fetching {parts.hostname} timed out after {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(400, f"{parts.hostname} cannot be fetched ({type(e).__name__}: {e})") from None
        finally:
            conn.close()

    def _read(self, resp, conn, host, deadline):
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError(413, f"the image at {host} is {int(length)} bytes, more than {self.max_bytes}")
        chunks, total = [], 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(400, f"fetching {host} timed out after {self.timeout:g} s")
            conn.pinned_sock.settimeout(remaining)  # conn.sock is None once the response owns it
            chunk = resp.read1(CHUNK)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError(413, f"the image at {host} is larger than {self.max_bytes} bytes")
            chunks.append(chunk)


def _short(url, n=120):
    s = str(url)
    return s if len(s) <= n else s[: n - 1] + "\u2026"
