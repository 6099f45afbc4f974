"""fedmsg message signatures (the ``x509`` crypto backend): verifying and signing.

What fedmsg signs, found in ``fedmsg/crypto/x509_ng.py`` and ``fedmsg/encoding``:

- the signer first sets ``envelope["crypto"] = "x509"``, so ``crypto`` is *inside* the
  signed bytes; only ``signature`` and ``certificate`` are stripped before verifying;
- the signed bytes are ``fedmsg.encoding.dumps(envelope)`` — sorted keys, compact
  separators, ASCII escapes (our :func:`canonical_json`) — encoded as UTF-8;
- the signature is RSA PKCS#1 v1.5 over SHA-1;
- ``signature`` is base64 of the raw signature and ``certificate`` is base64 of the
  certificate's *PEM* text (base64 twice), both cut into 76-character lines joined by
  ``\\n`` with a final ``\\n`` (M2Crypto's habit, kept for compatibility); readers
  decode leniently, ignoring the newlines;
- the certificate must be issued by the configured CA, be inside its validity period and
  not be on the CRL; then the certificate's common name must be allowed to send the
  topic by ``routing_policy`` (``{topic: [names]}``; topics missing from the policy pass
  unless ``routing_nitpicky``).

fedmsg hands a one-certificate store to OpenSSL; that is a one-level chain (message
certificate directly under the CA), which is checked here with ``cryptography`` directly.
``cryptography.x509.verification`` is not used because it has no CRL support and
enforces the Web PKI profile, which fedmsg deployments' certificates were never made for.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from fedmsg_notify.bus.envelope import Message, canonical_json

log = logging.getLogger(__name__)

OnInvalid = Literal["drop", "mark"]
CRED_FIELDS = ("signature", "certificate")
# fedmsg/M2Crypto line length for the base64 fields.
B64_LINE = 76
# Distinct certificates remembered; a peer inventing certificates cannot grow memory past this.
CACHE_SIZE = 1024
# How often (seconds) the CA and CRL files are looked at for changes.
RELOAD_EVERY = 60.0

# Every reason a message can be refused, for documentation and for the counters.
REASONS = (
    "unsigned",
    "unsupported-crypto",
    "bad-encoding",
    "untrusted-certificate",
    "certificate-not-yet-valid",
    "certificate-expired",
    "ca-expired",
    "crl-expired",
    "revoked",
    "bad-signature",
    "routing-policy",
)


class SignatureConfigError(Exception):
    """The CA, CRL, certificate or key named in the configuration cannot be used."""


@dataclass(frozen=True, slots=True)
class SignatureSettings:
    """How to treat signatures on received messages (``signatures:`` or fedmsg's own keys)."""

    validate: bool = False
    ca_cert: Path | None = None
    crl: Path | None = None
    routing_policy: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    routing_nitpicky: bool = False
    on_invalid: OnInvalid = "drop"
    # Where these settings came from, so log lines can point at the right file.
    source: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one message: ``reason`` is ``"ok"`` or one of :data:`REASONS`."""

    ok: bool
    reason: str
    detail: str = ""
    signer: str | None = None

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def _fail(reason: str, detail: str = "", signer: str | None = None) -> Verdict:
    return Verdict(ok=False, reason=reason, detail=detail, signer=signer)


@dataclass(frozen=True, slots=True)
class _Known:
    """A certificate already proven to be issued by the CA; the rest is re-checked per message."""

    cert: x509.Certificate
    key: rsa.RSAPublicKey
    signer: str
    serial: int
    not_before: float
    not_after: float


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _b64decode(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"'{name}' is {type(value).__name__}, expected a base64 string")
    try:
        # Lenient like fedmsg (base64.b64decode without validate): the 76-column newlines
        # are discarded.
        return base64.b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"'{name}' is not base64: {exc}") from None


def wrap_b64(data: bytes) -> str:
    """fedmsg's ``_prep_crypto_msg`` layout: base64 in 76-column lines, each ending in a newline."""
    text = base64.b64encode(data).decode("ascii")
    return "".join(text[n : n + B64_LINE] + "\n" for n in range(0, len(text), B64_LINE))


def signed_bytes(envelope: Mapping[str, Any]) -> bytes:
    """The bytes a fedmsg signature covers: the canonical envelope without signature/certificate."""
    return canonical_json({k: v for k, v in envelope.items() if k not in CRED_FIELDS}).encode("utf-8")


def policy_allows(topic: str, signer: str | None, policy: Mapping[str, tuple[str, ...]], nitpicky: bool) -> bool:
    """fedmsg's ``validate_policy``: listed topics need a listed signer; others pass unless nitpicky."""
    if topic in policy:
        return signer is not None and signer in policy[topic]
    return not nitpicky


def _load_ca(path: Path) -> x509.Certificate:
    data = _read(path, "CA certificate")
    try:
        # fedmsg (via pyOpenSSL's load_certificate) uses the first certificate in the file.
        ca = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise SignatureConfigError(f"{path}: not a PEM X.509 CA certificate: {exc}") from None
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and not constraints.ca:
        raise SignatureConfigError(f"{path}: certificate is not a CA (basicConstraints CA:FALSE)")
    return ca


def _load_crl(path: Path, ca: x509.Certificate) -> tuple[frozenset[int], float | None]:
    """The revoked serial numbers and the next-update time of the CRL at ``path``, issued by ``ca``."""
    data = _read(path, "certificate revocation list")
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise SignatureConfigError(f"{path}: not a PEM certificate revocation list: {exc}") from None
    # A CRL from another CA would silently revoke nothing; refuse it up front.
    try:
        valid = crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise SignatureConfigError(f"{path}: CRL is not signed by the configured CA ({ca.subject.rfc4514_string()})")
    next_update = crl.next_update_utc
    return frozenset(entry.serial_number for entry in crl), next_update.timestamp() if next_update else None


class Verifier:
    """Checks fedmsg x509 signatures against one CA and (optionally) its CRL.

    ``check`` returns a :class:`Verdict` and changes nothing but caches (verified
    certificates by PEM bytes; the CA and CRL files, re-read at most once a minute when
    they change). ``admit`` applies the configured policy to a :class:`Message`: counts,
    logs and marks it, and says whether to deliver it.
    """

    def __init__(self, settings: SignatureSettings, *, clock: Callable[[], float] = time.time) -> None:
        if settings.ca_cert is None:
            raise SignatureConfigError("signature validation needs a CA certificate (ca_cert)")
        self.settings = settings
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._cache: OrderedDict[bytes, _Known | Verdict] = OrderedDict()
        self.ca = _load_ca(settings.ca_cert)
        self._revoked: frozenset[int] = frozenset()
        self._crl_next_update: float | None = None
        if settings.crl is not None:
            self._revoked, self._crl_next_update = _load_crl(settings.crl, self.ca)
        self._stamp = self._files_stamp()
        self._next_look = clock() + RELOAD_EVERY

    def _files_stamp(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in (self.settings.ca_cert, self.settings.crl):
            try:
                info = path.stat() if path is not None else None
            except OSError:
                info = None
            stamps.append((info.st_mtime_ns, info.st_size) if info is not None else None)
        return tuple(stamps)

    def _maybe_reload(self, now: float) -> None:
        """Pick up a rotated CA or a refreshed CRL (admins replace the files; fedmsg re-reads them too)."""
        if now < self._next_look:
            return
        self._next_look = now + RELOAD_EVERY
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        assert self.settings.ca_cert is not None
        try:
            ca = _load_ca(self.settings.ca_cert)
            revoked, next_update = _load_crl(self.settings.crl, ca) if self.settings.crl else (frozenset(), None)
        except SignatureConfigError as exc:
            log.error("signature files changed but cannot be used, keeping the previous ones: %s", exc)
            return
        self.ca, self._revoked, self._crl_next_update = ca, revoked, next_update
        self._cache.clear()
        log.info("reloaded the CA %s and CRL %s", self.settings.ca_cert, self.settings.crl or "(none)")

    # -- checking ----------------------------------------------------------------------

    def _certificate(self, pem: bytes) -> _Known | Verdict:
        """Parse and chain-check a certificate once; later messages with it hit the cache."""
        cached = self._cache.get(pem)
        if cached is not None:
            self._cache.move_to_end(pem)
            return cached
        result = self._examine(pem)
        self._cache[pem] = result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def _examine(self, pem: bytes) -> _Known | Verdict:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            return _fail("bad-encoding", f"certificate is not a PEM X.509 certificate: {exc}")
        signer = _common_name(cert)
        if cert.issuer != self.ca.subject:
            return _fail(
                "untrusted-certificate", f"issued by {cert.issuer.rfc4514_string()}, not the configured CA", signer
            )
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            return _fail(
                "untrusted-certificate", f"not signed by the configured CA: {exc or type(exc).__name__}", signer
            )
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            # fedmsg verifies with PKCS#1 v1.5 padding, which only RSA keys have.
            return _fail(
                "bad-signature", f"certificate key is {type(key).__name__}, fedmsg signatures need RSA", signer
            )
        return _Known(
            cert=cert,
            key=key,
            signer=signer,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    def check(self, envelope: Mapping[str, Any]) -> Verdict:
        """Verify one envelope exactly as ``fedmsg.crypto.validate`` would (x509 only)."""
        crypto = envelope.get("crypto")
        if crypto is None:
            # fedmsg <= 0.7.2 did not name the backend: a certificate means x509.
            if "certificate" in envelope:
                crypto = "x509"
            elif "signature" in envelope:
                crypto = "gpg"
            else:
                return _fail("unsigned", "no signature or certificate")
        if crypto != "x509":
            return _fail("unsupported-crypto", f"crypto backend {str(crypto)[:40]!r}; only x509 is supported")
        for name in CRED_FIELDS:
            if name not in envelope:
                return _fail("unsigned", f"no '{name}' field")
        try:
            signature = _b64decode(envelope["signature"], "signature")
            pem = _b64decode(envelope["certificate"], "certificate")
        except ValueError as exc:
            return _fail("bad-encoding", str(exc))
        now = self.clock()
        self._maybe_reload(now)
        known = self._certificate(pem)
        if isinstance(known, Verdict):
            return known
        when = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
        ca_after = self.ca.not_valid_after_utc.timestamp()
        if now > ca_after or now < self.ca.not_valid_before_utc.timestamp():
            return _fail(
                "ca-expired", f"the CA is not valid at {when} (valid until {self.ca.not_valid_after_utc})", known.signer
            )
        if now < known.not_before:
            return _fail("certificate-not-yet-valid", f"valid from {known.cert.not_valid_before_utc}", known.signer)
        if now > known.not_after:
            return _fail("certificate-expired", f"expired {known.cert.not_valid_after_utc}", known.signer)
        if self._crl_next_update is not None and now > self._crl_next_update:
            # OpenSSL (and so fedmsg) refuses everything once the CRL is stale: a
            # revocation published since could be missing.
            return _fail("crl-expired", f"the CRL {self.settings.crl} expired; fetch a fresh one", known.signer)
        if known.serial in self._revoked:
            return _fail("revoked", f"certificate serial {known.serial:#x} is on the CRL", known.signer)
        try:
            known.key.verify(signature, signed_bytes(envelope), padding.PKCS1v15(), hashes.SHA1())
        except InvalidSignature:
            return _fail("bad-signature", "signature does not match the message", known.signer)
        except (TypeError, ValueError) as exc:  # e.g. a non-serialisable value cannot have been signed
            return _fail("bad-signature", f"cannot verify: {exc}", known.signer)
        topic = envelope.get("topic")
        if not isinstance(topic, str) or not policy_allows(
            topic, known.signer, self.settings.routing_policy, self.settings.routing_nitpicky
        ):
            listed = topic in self.settings.routing_policy if isinstance(topic, str) else False
            why = "is not an allowed sender" if listed else "has no routing_policy entry (routing_nitpicky)"
            return _fail("routing-policy", f"{known.signer!r} {why} for topic {topic!r}", known.signer)
        return Verdict(ok=True, reason="ok", signer=known.signer)

    def admit(self, message: Message) -> bool:
        """Check ``message``, set ``message.verified``, count and log; True if it may be delivered."""
        verdict = self.check(message.envelope)
        message.verified = verdict.ok
        self.counts[verdict.reason] += 1
        if verdict.ok:
            return True
        deliver = self.settings.on_invalid == "mark"
        seen = self.counts[verdict.reason]
        # The first few of each kind, then every 1000th: a forger cannot flood the log.
        if seen <= 5 or seen % 1000 == 0:
            log.warning(
                "message %s on %s failed signature validation (%s)%s; %s [%d so far]",
                message.msg_id,
                message.topic,
                verdict,
                f" signer={verdict.signer!r}" if verdict.signer else "",
                "delivering it marked unverified" if deliver else "dropped",
                seen,
            )
        return deliver

    @property
    def rejected(self) -> dict[str, int]:
        """Refusal counts by reason (what ``status`` and the shutdown log report)."""
        return {reason: n for reason, n in self.counts.items() if reason != "ok"}


class Signer:
    """Signs envelopes as ``fedmsg.crypto.sign`` does, for ``Publisher(signer=...)``."""

    def __init__(self, cert_path: str | Path, key_path: str | Path) -> None:
        cert_path, key_path = Path(cert_path), Path(key_path)
        try:
            self.cert = x509.load_pem_x509_certificate(_read(cert_path, "certificate"))
        except ValueError as exc:
            raise SignatureConfigError(f"{cert_path}: not a PEM X.509 certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(_read(key_path, "private key"), password=None)
        except TypeError:
            raise SignatureConfigError(
                f"{key_path}: the private key is encrypted; fedmsg keys are unencrypted"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            # The library's message could quote key material; say only what is wrong.
            raise SignatureConfigError(f"{key_path}: not a PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SignatureConfigError(f"{key_path}: fedmsg signatures need an RSA key, this is {type(key).__name__}")
        if key.public_key().public_numbers() != self._cert_key().public_numbers():
            raise SignatureConfigError(f"{key_path}: the key does not belong to the certificate {cert_path}")
        self.key = key
        self.signer = _common_name(self.cert)
        # fedmsg re-serialises the certificate, so stray text around the PEM block is not sent.
        self._certificate = wrap_b64(self.cert.public_bytes(serialization.Encoding.PEM))

    def _cert_key(self) -> rsa.RSAPublicKey:
        key = self.cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureConfigError("fedmsg signatures need an RSA certificate")
        return key

    def __call__(self, envelope: dict[str, Any]) -> dict[str, Any]:
        signed = {k: v for k, v in envelope.items() if k not in CRED_FIELDS}
        signed["crypto"] = "x509"
        signature = self.key.sign(signed_bytes(signed), padding.PKCS1v15(), hashes.SHA1())
        signed["signature"] = wrap_b64(signature)
        signed["certificate"] = self._certificate
        return signed


def settings_from_fedmsg(config: Mapping[str, Any], source: str = "fedmsg.d") -> SignatureSettings:
    """Translate fedmsg's own keys (``validate_signatures``, ``ca_cert_location``, ...).

    Only local files are accepted: fedmsg's defaults are https URLs it downloads at run
    time, which would make every message's fate depend on a web server.
    """
    validate = bool(config.get("validate_signatures", False))
    if not validate:
        return SignatureSettings(validate=False, source=source)
    backend = config.get("crypto_backend", "x509")
    if backend != "x509":
        raise SignatureConfigError(f"{source}: crypto_backend {backend!r} is not supported; only x509")
    paths: dict[str, Path | None] = {}
    for key in ("ca_cert_location", "crl_location"):
        value = config.get(key)
        if value in (None, ""):
            if key == "ca_cert_location":
                raise SignatureConfigError(
                    f"{source}: validate_signatures is on but ca_cert_location is not set "
                    "(fedmsg's default is a remote URL); set it to a local CA certificate file"
                )
            paths[key] = None
            continue
        if not isinstance(value, str):
            raise SignatureConfigError(f"{source}: {key} must be a file path, got {type(value).__name__}")
        if "://" in value:
            raise SignatureConfigError(
                f"{source}: {key} is a remote URL ({value}); fedmsg-notify only reads local files — "
                "download it (and keep it fresh) and point {key} at the file".replace("{key}", key)
            )
        paths[key] = Path(value).expanduser()
    return SignatureSettings(
        validate=True,
        ca_cert=paths["ca_cert_location"],
        crl=paths["crl_location"],
        routing_policy=normalise_policy(config.get("routing_policy") or {}, source),
        routing_nitpicky=bool(config.get("routing_nitpicky", False)),
        source=source,
    )


def normalise_policy(raw: Any, source: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise SignatureConfigError(f"{source}: routing_policy must map topics to lists of certificate names")
    policy: dict[str, tuple[str, ...]] = {}
    for topic, names in raw.items():
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise SignatureConfigError(f"{source}: routing_policy[{topic!r}] must be a list of certificate names")
        policy[str(topic)] = tuple(names)
    return policy


def make_verifier(settings: SignatureSettings) -> Verifier | None:
    """The daemon's verifier, or None when validation is off (every message is then ``verified=None``)."""
    return Verifier(settings) if settings.validate else None
