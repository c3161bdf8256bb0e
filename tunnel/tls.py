"""TLS for the edge's listeners (certificates chosen by SNI, reloadable) and for the connector
(verify the edge with the system store, a private CA, and/or a public-key pin)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """A certificate or key cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class CertPair:
    cert: str
    key: str

    @classmethod
    def parse(cls, value: str) -> "CertPair":
        """``CERT:KEY`` (as given to ``--tls-sni-cert``)."""
        cert, sep, key = value.partition(":")
        if not sep or not cert or not key:
            raise TLSConfigError(f"expected CERT_FILE:KEY_FILE, got {value!r}")
        return cls(cert, key)


def certificate_names(cert_file: str) -> list[str]:
    """DNS names a certificate serves (its SANs, else its common name), lowercased."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"cannot read certificate {cert_file}: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return [str(n).lower() for n in names]


def spki_pin_of_der(der_cert: bytes) -> str:
    """``sha256:<base64>`` of a DER certificate's SubjectPublicKeyInfo (what ``--pin`` takes)."""
    cert = x509.load_der_x509_certificate(der_cert)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def spki_pin_of_file(cert_file: str) -> str:
    """The pin of the first certificate in a PEM file."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    return spki_pin_of_der(cert.public_bytes(serialization.Encoding.DER))


def normalize_pin(pin: str) -> bytes:
    """Accept ``sha256:<base64>`` or ``sha256:<hex>``; return the 32-byte digest."""
    scheme, _, value = pin.partition(":")
    if scheme.lower() != "sha256" or not value:
        raise TLSConfigError(f"a pin looks like sha256:<base64 or hex>, got {pin!r}")
    try:
        digest = bytes.fromhex(value) if len(value) == 64 else base64.b64decode(value, validate=True)
    except ValueError:
        raise TLSConfigError(f"cannot decode pin {pin!r}") from None
    if len(digest) != 32:
        raise TLSConfigError(f"pin {pin!r} is not a SHA-256 digest")
    return digest


class CertStore:
    """Server certificates for one edge: a default pair plus pairs picked by SNI.

    ``context`` is the SSLContext to give a listener. Its SNI callback looks the client's server
    name up in the current table (exact name, then the longest matching ``*.`` wildcard), so
    ``reload()`` changes what new handshakes get; existing connections keep their session.
    """

    def __init__(self, default: CertPair, extra: list[CertPair] | None = None):
        self.default = default
        self.extra = list(extra or [])
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        self.context.sni_callback = self._on_sni
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcards: list[tuple[str, ssl.SSLContext]] = []
        self.reload()

    def reload(self) -> None:
        """(Re)read every certificate and key; on any error keep the current ones and raise."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcards: list[tuple[str, ssl.SSLContext]] = []
        for pair in [self.default, *self.extra]:
            ctx = _server_context(pair)
            for name in certificate_names(pair.cert):
                if name.startswith("*."):
                    wildcards.append((name[1:], ctx))
                else:
                    exact.setdefault(name, ctx)
        _load(self.context, self.default)  # new handshakes without SNI get the new default
        wildcards.sort(key=lambda item: -len(item[0]))
        self._exact, self._wildcards = exact, wildcards

    def _on_sni(self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if not server_name:
            return None
        name = server_name.lower()
        ctx = self._exact.get(name)
        if ctx is None:
            for suffix, candidate in self._wildcards:
                if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                    ctx = candidate
                    break
        if ctx is not None:
            ssl_object.context = ctx
        return None

    @property
    def pin(self) -> str:
        """The default certificate's public-key pin, for ``tunnel connect --pin``."""
        return spki_pin_of_file(self.default.cert)


def _server_context(pair: CertPair) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    _load(ctx, pair)
    return ctx


def _load(ctx: ssl.SSLContext, pair: CertPair) -> None:
    try:
        ctx.load_cert_chain(pair.cert, pair.key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load certificate {pair.cert} with key {pair.key}: {exc}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_context(ca_file: str | None = None, pin: str | None = None) -> ssl.SSLContext:
    """The connector's TLS context: the system trust store, or ``ca_file``; with only a pin,
    chain checks are replaced by the pin check the caller does after the handshake."""
    if pin and not ca_file:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load CA file {ca_file}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
