"""Where a Subscription may send, and which channel headers it may set.

A Subscription makes this server send requests to an address its subscriber chose, so unchecked
it is a way into the server's own network (SSRF): a cloud's metadata service at 169.254.169.254,
an admin port on loopback, a database on a private address. Unless `subscription_allow_private`
is set (tests; a closed network whose subscribers are neighbours), registration refuses an
endpoint whose host is such an address written out, and sending (guard.py) refuses a host that
resolves to one, then connects to the very address it checked, so that a second DNS answer
cannot differ from the first (DNS rebinding).

Channel headers are the subscriber's business (an Authorization for their endpoint, say), but not
those that frame or route the request: with them a subscriber could smuggle a second request
through a proxy, or aim the request at another virtual host.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Hop-by-hop and framing headers (RFC 9110 7.6.1, RFC 9112 6): the server's to set, never a
# subscriber's. Proxy-* too (Proxy-Authorization, Proxy-Connection).
FRAMING = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
     "keep-alive"}
)  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110 5.1)
_VALUE = re.compile(r"[\t\x20-\x7e]*")  # printable ASCII: no line breaks to smuggle lines with

NOT_ALLOWED = "the endpoint's address is not allowed"


def endpoint_error(endpoint: object, *, allow_private: bool) -> str | None:
    """Why this channel.endpoint cannot be registered; None when it can."""
    if not isinstance(endpoint, str) or not endpoint:
        return "channel.endpoint is required"
    try:
        parts = urlsplit(endpoint)
    except ValueError:
        return "channel.endpoint is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "channel.endpoint must be an http:// or https:// URL"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "channel.endpoint's port must be a number from 1 to 65535"
    address = literal_address(parts.hostname)
    if address is not None and not allow_private and not is_public(address):
        return "channel.endpoint may not be a loopback, private, link-local or reserved address"
    return None


def literal_address(host: str) -> Address | None:
    """The address `host` writes out, if it is one; None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # Forms the C resolver also reads as an IPv4 address: 127.1, 2130706433, 0x7f.0.0.1.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_public(address: Address) -> bool:
    """Whether the address is on the public internet: the only place notifications go."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def parse_header(line: object) -> tuple[str, str] | None:
    """(name, value) of a `Name: value` line; None when it is not one."""
    if not isinstance(line, str):
        return None
    name, colon, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
        return None
    return name, value


def is_framing(name: str) -> bool:
    lowered = name.lower()
    return lowered in FRAMING or lowered.startswith("proxy-")


def header_error(lines: object) -> str | None:
    """Why these channel.header lines cannot be registered; None when they can."""
    if lines is None:
        return None
    if not isinstance(lines, list):
        return "channel.header must be a list of 'Name: value' lines"
    for line in lines:
        parsed = parse_header(line)
        if parsed is None:
            return "each channel.header must be one 'Name: value' line of printable ASCII"
        if is_framing(parsed[0]):
            return f"channel.header may not set {parsed[0]}: the server frames its requests"
    return None
