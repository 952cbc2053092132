"""The image-address rule: which image URIs, hosts and network addresses a fetch may reach.

`resolve_location` is a pure function (the address filter) that turns an image URI into a `Location` or raises
ImageNotAllowed before any I/O: s3:// any bucket of the configured endpoint; file:// only under the configured
root; https:// only from allow-listed origins (`host` means port 443, `host:port` that port). An https host name
must also resolve to addresses `address_allowed` accepts: `FilteringResolver` runs that check inside aiohttp's
resolver, so the address checked is the address connected to. The object stores and the fetcher that use this
rule are in workers/fetch.py.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from workers.errors import ImageNotAllowed
from workers.settings import FetchSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HTTPS_PORT = 443


@dataclass(frozen=True)
class Location:
    scheme: Literal["s3", "file", "https"]
    root: str  # bucket, directory, or https://host[:port]
    path: str


def resolve_location(uri: str, settings: FetchSettings) -> Location:
    """Decide whether `uri` may be fetched, and from which store; raise ImageNotAllowed if not."""
    if any(_is_control(char) for char in uri):
        raise ImageNotAllowed(f"control characters in image URIs are refused: {uri!r}")
    try:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "s3":
            if not parts.netloc or not parts.path.strip("/"):
                raise ImageNotAllowed(f"s3 URI needs a bucket and a key: {uri!r}")
            return Location("s3", parts.netloc, unquote(parts.path.lstrip("/")))
        if scheme == "file":
            return _resolve_file(parts.netloc, unquote(parts.path), uri, settings)
        if scheme == "https":
            return _resolve_https(parts, uri, settings)
    except ValueError as exc:  # urlsplit's verdict on brackets and ports: not a URI we can reason about
        raise ImageNotAllowed(f"malformed image URI {uri!r}: {exc}") from exc
    raise ImageNotAllowed(f"scheme {scheme or '(none)'!r} is not supported (s3, file, https)")


def _is_control(char: str) -> bool:
    # urlsplit silently drops some of these and lets others through; either way the URI is not what it shows
    return ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F


def _resolve_file(netloc: str, raw_path: str, uri: str, settings: FetchSettings) -> Location:
    if settings.file_root is None:
        raise ImageNotAllowed("file:// images are disabled (no file_root configured)")
    if netloc not in ("", "localhost"):
        raise ImageNotAllowed(f"file URI names a remote host: {uri!r}")
    root = Path(os.path.realpath(settings.file_root))
    target = Path(os.path.realpath(raw_path))
    if not raw_path.startswith("/") or not target.is_relative_to(root):
        raise ImageNotAllowed(f"file {raw_path!r} is outside the image root")
    return Location("file", str(root), target.relative_to(root).as_posix())


def _resolve_https(parts: SplitResult, uri: str, settings: FetchSettings) -> Location:
    if parts.username or parts.password:
        raise ImageNotAllowed(f"credentials in image URIs are refused: {uri!r}")
    host, port = _origin(parts)
    if (host, port) not in allowed_origins(tuple(settings.https_allowed_hosts)):
        raise ImageNotAllowed(f"origin {host}:{port} is not in the https allow-list")
    literal = _ip_literal(host)  # aiohttp connects to an address literal without asking the resolver
    if literal is not None and not address_allowed(literal, settings.https_allow_private_addresses):
        raise ImageNotAllowed(f"address {host} is not allowed for https images")
    shown = f"[{host}]" if ":" in host else host
    origin = f"https://{shown}" if port == HTTPS_PORT else f"https://{shown}:{port}"
    return Location("https", origin, unquote(parts.path.lstrip("/")))


@functools.lru_cache(maxsize=8)
def allowed_origins(entries: tuple[str, ...]) -> frozenset[tuple[str, int]]:
    """The allow-list as (host, port) pairs, parsed once per list rather than once per image."""
    return frozenset(parse_allowed_host(entry) for entry in entries)


def parse_allowed_host(entry: str) -> tuple[str, int]:
    """An allow-list entry, `host` or `host:port` (IPv6 in brackets), as (host, port); a bare host means 443."""
    parts = urlsplit(f"//{entry.strip()}")
    if parts.username or parts.password or parts.path or parts.query or parts.fragment:
        raise ValueError(f"https allow-list entry {entry!r} is not host or host:port")
    return _origin(parts)


def _origin(parts: SplitResult) -> tuple[str, int]:
    """(host, port) with the host lower-cased and an address literal in its canonical form."""
    if not parts.hostname:
        raise ValueError(f"no host in {parts.netloc!r}")
    host = parts.hostname.lower()
    literal = _ip_literal(host)
    return (host if literal is None else str(literal)), (HTTPS_PORT if parts.port is None else parts.port)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_allowed(address: IPAddress, allow_private: bool) -> bool:
    """Whether an https image may be fetched from `address`: a global unicast address, or, with
    `allow_private`, also a loopback, private or link-local one. An IPv4 address carried inside an IPv6 one
    (mapped, NAT64, 6to4, Teredo) must pass too, because that is where the packets end up."""
    return all(_one_address_allowed(reached, allow_private) for reached in _reached_addresses(address))


def _reached_addresses(address: IPAddress) -> list[IPAddress]:
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)]
    embedded: list[IPAddress] = [address.sixtofour] if address.sixtofour is not None else []
    if address.teredo is not None:
        embedded.extend(address.teredo)
    return [address, *embedded]


def _one_address_allowed(address: IPAddress, allow_private: bool) -> bool:
    if address.is_multicast or address.is_unspecified or (address.version == 4 and address.is_reserved):
        return False  # never a unicast peer, whatever the setting
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    # is_global alone passes fec0::/10 and the reserved ::/8 forms (IPv4-compatible ::a.b.c.d)
    return allow_private or (address.is_global and not address.is_reserved and not site_local)


class AddressRefused(OSError):
    """Every address a host resolved to was refused (an OSError, as resolvers' errors are)."""


class FilteringResolver(AbstractResolver):
    """Resolves with `inner`, then keeps only the addresses `address_allowed` accepts. aiohttp connects to
    what this returns, so no later answer (DNS rebinding) can slip in between the check and the connection."""

    def __init__(self, inner: AbstractResolver, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        kept = [answer for answer in answers if self._allowed(answer["host"])]
        if not kept:
            refused = ", ".join(answer["host"] for answer in answers)
            raise AddressRefused(f"{host} resolves only to addresses not allowed for https images: {refused}")
        return kept

    def _allowed(self, host: str) -> bool:
        literal = _ip_literal(host)
        return literal is not None and address_allowed(literal, self._allow_private)

    async def close(self) -> None:
        await self._inner.close()
