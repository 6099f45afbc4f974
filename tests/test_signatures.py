"""fedmsg x509 signatures: interop with the real fedmsg (own virtualenv), every refusal reason, config.

The PKI is generated here with ``cryptography`` (one CA, good/expired/revoked/future
certificates, a second CA, a forger reusing the CA's name); fedmsg's own shipped test PKI
is used too. Signing and validating on fedmsg's side run in the fedmsg virtualenv.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fedmsg_notify.bus.envelope import Message, build_envelope, canonical_json, decode_frames
from fedmsg_notify.bus.signatures import (
    SignatureConfigError,
    SignatureSettings,
    Signer,
    Verifier,
    settings_from_fedmsg,
)
from fedmsg_notify.bus.zeromq import Subscriber
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError
from hypothesis import given, settings
from hypothesis import strategies as st

TOPIC = "org.fedoraproject.dev.bodhi.update.comment"
NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
BODY = {"comment": {"text": "works for me ✓", "user": {"name": "ralph"}}, "agent": "ralph"}

SIGN = """
import json, sys, fedmsg.crypto
for line in sys.stdin:
    req = json.loads(line)
    signed = fedmsg.crypto.sign(req["message"], ssldir=req["ssldir"], certname=req["certname"], crypto_backend="x509")
    print(json.dumps(signed), flush=True)
"""

VALIDATE = """
import json, sys, logging, fedmsg.crypto
logging.basicConfig(level=logging.CRITICAL)
for line in sys.stdin:
    req = json.loads(line)
    print(json.dumps(bool(fedmsg.crypto.validate(req["message"], **req["config"]))), flush=True)
"""


# -- a PKI made for these tests ------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmsg-notify tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issued:
    cert: x509.Certificate
    key: Any

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        crt, key = directory / f"{name}.crt", directory / f"{name}.key"
        crt.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return crt, key


def make_ca(cn: str, *, before: dt.datetime = NOW - DAY, after: dt.datetime = NOW + 365 * DAY) -> Issued:
    key = _rsa()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    cn: str,
    *,
    serial: int | None = None,
    before: dt.datetime = NOW - DAY,
    after: dt.datetime = NOW + 30 * DAY,
    key: Any = None,
    issuer_name: x509.Name | None = None,
) -> Issued:
    key = key or _rsa()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name or ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_crl(ca: Issued, serials: list[int], *, next_update: dt.datetime = NOW + 30 * DAY) -> bytes:
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
    builder = builder.last_update(NOW - DAY).next_update(next_update)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - DAY).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    dir: Path
    ca: Path
    crl: Path
    other_ca: Path
    stale_crl: Path
    expired_ca: Path
    signers: dict[str, str]  # role -> certname (files <certname>.crt/.key in dir)
    authority: Issued  # the CA's certificate and key, to issue new CRLs

    def settings(self, **changes: Any) -> SignatureSettings:
        base: dict[str, Any] = {"validate": True, "ca_cert": self.ca, "crl": self.crl}
        base.update(changes)
        return SignatureSettings(**base)

    def signer(self, role: str) -> Signer:
        name = self.signers[role]
        return Signer(self.dir / f"{name}.crt", self.dir / f"{name}.key")


REVOKED_SERIAL = 0x5EC0DE


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca("fedmsg test CA")
    other = make_ca("some other CA")
    old_ca = make_ca("fedmsg test CA", before=NOW - 400 * DAY, after=NOW - 30 * DAY)
    roles = {
        "good": issue(ca, "bodhi-app01.example.org"),
        "koji": issue(ca, "koji-hub01.example.org"),
        "expired": issue(ca, "bodhi-old.example.org", before=NOW - 60 * DAY, after=NOW - DAY),
        "future": issue(ca, "bodhi-new.example.org", before=NOW + 10 * DAY, after=NOW + 40 * DAY),
        "revoked": issue(ca, "bodhi-stolen.example.org", serial=REVOKED_SERIAL),
        "wrong-ca": issue(other, "bodhi-app01.example.org"),
        # Claims the real CA's name but is signed by another key: only the signature check catches it.
        "forged-issuer": issue(other, "bodhi-app01.example.org", issuer_name=ca.cert.subject),
        "under-expired-ca": issue(old_ca, "bodhi-app01.example.org", before=NOW - 60 * DAY, after=NOW + 30 * DAY),
        "ec": issue(ca, "ec-host.example.org", key=ec.generate_private_key(ec.SECP256R1())),
    }
    signers = {}
    for role, issued in roles.items():
        issued.write(directory, role)
        signers[role] = role
    ca_path, other_path, old_path = directory / "ca.crt", directory / "other-ca.crt", directory / "expired-ca.crt"
    ca.write(directory, "ca")
    other.write(directory, "other-ca")
    old_ca.write(directory, "expired-ca")
    crl = directory / "crl.pem"
    crl.write_bytes(make_crl(ca, [REVOKED_SERIAL]))
    stale = directory / "stale-crl.pem"
    stale.write_bytes(make_crl(ca, [REVOKED_SERIAL], next_update=NOW - DAY))
    return Pki(directory, ca_path, crl, other_path, stale, old_path, signers, ca)


def unsigned(topic: str = TOPIC, body: Any = None) -> dict[str, Any]:
    return build_envelope(topic, BODY if body is None else body, i=1, username="apache")


def run_fedmsg(fedmsg_python: str, script: str, requests: list[dict[str, Any]]) -> list[Any]:
    """Run ``script`` under the real fedmsg with one JSON request per stdin line; one JSON answer per line."""
    proc = subprocess.run(
        [fedmsg_python, "-c", script],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == len(requests), proc.stderr
    return answers


@pytest.fixture(scope="session")
def fedmsg_signed(pki: Pki, fedmsg_python: str) -> dict[str, dict[str, Any]]:
    """One message signed by the real ``fedmsg.crypto.sign`` with each role's certificate."""
    roles = [r for r in pki.signers if r != "ec"]  # fedmsg signs with PKCS#1 v1.5: RSA only
    answers = run_fedmsg(
        fedmsg_python,
        SIGN,
        [{"message": unsigned(), "ssldir": str(pki.dir), "certname": pki.signers[r]} for r in roles],
    )
    return dict(zip(roles, answers, strict=True))


# -- interop with the real fedmsg ----------------------------------------------------------


def test_message_signed_by_real_fedmsg_verifies(pki: Pki, fedmsg_signed: dict[str, dict[str, Any]]) -> None:
    """A message a fedmsg service signed is accepted, with the certificate's name as signer."""
    envelope = fedmsg_signed["good"]
    assert envelope["crypto"] == "x509" and envelope["signature"].endswith("\n")
    verdict = Verifier(pki.settings()).check(envelope)
    assert verdict.ok, verdict
    assert verdict.signer == "bodhi-app01.example.org"


def test_our_signature_is_byte_identical_to_fedmsg(pki: Pki, fedmsg_signed: dict[str, dict[str, Any]]) -> None:
    """Our signer produces exactly what fedmsg.crypto.sign produces, line-wrapping included."""
    theirs = fedmsg_signed["good"]
    base = {k: v for k, v in theirs.items() if k not in ("crypto", "signature", "certificate")}
    assert pki.signer("good")(base) == theirs


def test_shipped_fedmsg_test_pki(fedmsg_python: str) -> None:
    """fedmsg's own test CA, CRL and host certificates work unchanged: good host accepted, revoked one refused."""
    found = list(Path(fedmsg_python).parent.parent.glob("lib/python*/site-packages/fedmsg/tests/test_certs/keys"))
    assert found, "the fedmsg wheel's test PKI is missing"
    keys = found[0]
    good, revoked = run_fedmsg(
        fedmsg_python,
        SIGN,
        [
            {"message": unsigned(), "ssldir": str(keys), "certname": name}
            for name in ("bodhi-app01.phx2.fedoraproject.org", "dummy-revoked")
        ],
    )
    verifier = Verifier(SignatureSettings(validate=True, ca_cert=keys / "ca.crt", crl=keys / "crl.pem"))
    assert verifier.check(good).ok
    assert verifier.check(revoked).reason == "revoked"


@pytest.mark.parametrize(
    ("role", "reason"),
    [
        ("wrong-ca", "untrusted-certificate"),
        ("forged-issuer", "untrusted-certificate"),
        ("revoked", "revoked"),
        ("expired", "certificate-expired"),
        ("future", "certificate-not-yet-valid"),
        ("under-expired-ca", "untrusted-certificate"),
    ],
)
def test_bad_certificates_fail_with_their_reason(
    pki: Pki, fedmsg_signed: dict[str, dict[str, Any]], role: str, reason: str
) -> None:
    """A fedmsg-signed message whose certificate is untrusted, revoked or out of date is refused, saying why."""
    verdict = Verifier(pki.settings()).check(fedmsg_signed[role])
    assert not verdict.ok
    assert verdict.reason == reason, verdict


def test_expired_ca_refuses_everything(pki: Pki, fedmsg_signed: dict[str, dict[str, Any]]) -> None:
    """When the configured CA itself has expired, even its own certificates are refused as 'ca-expired'."""
    verdict = Verifier(pki.settings(ca_cert=pki.expired_ca, crl=None)).check(fedmsg_signed["under-expired-ca"])
    assert verdict.reason == "ca-expired", verdict


def test_stale_crl_refuses_everything(pki: Pki, fedmsg_signed: dict[str, dict[str, Any]]) -> None:
    """As in fedmsg (OpenSSL), a CRL past its next-update date refuses messages instead of trusting stale data."""
    verdict = Verifier(pki.settings(crl=pki.stale_crl)).check(fedmsg_signed["good"])
    assert verdict.reason == "crl-expired", verdict


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: e["msg"]["comment"].update(text="works for me, ship it"), "bad-signature"),
        (lambda e: e.update(topic=TOPIC.replace("bodhi", "koji")), "bad-signature"),
        (lambda e: e.update(timestamp=e["timestamp"] + 1), "bad-signature"),
        (lambda e: e.update(crypto="gpg"), "unsupported-crypto"),
        (lambda e: e.pop("signature"), "unsigned"),
        (lambda e: e.pop("certificate"), "unsigned"),
        (lambda e: e.update(signature=e["signature"][:-10] + "\n"), "bad-encoding"),
        (lambda e: e.update(certificate="bm90IGEgY2VydGlmaWNhdGU=\n"), "bad-encoding"),
        (lambda e: e.update(signature=12), "bad-encoding"),
    ],
    ids=["body", "topic", "timestamp", "gpg", "no-signature", "no-certificate", "truncated", "garbage-cert", "not-str"],
)
def test_tampered_messages_fail_with_their_reason(
    pki: Pki, fedmsg_signed: dict[str, dict[str, Any]], change: Callable[[dict[str, Any]], Any], reason: str
) -> None:
    """Any change to a signed message after signing, or broken credentials, is refused with the matching reason."""
    envelope = json.loads(json.dumps(fedmsg_signed["good"]))
    change(envelope)
    verdict = Verifier(pki.settings()).check(envelope)
    assert not verdict.ok
    assert verdict.reason == reason, verdict


def test_unsigned_message_is_refused(pki: Pki) -> None:
    """A message with no signature at all is refused as 'unsigned' when validation is on."""
    verdict = Verifier(pki.settings()).check(unsigned())
    assert (verdict.ok, verdict.reason) == (False, "unsigned")


def test_routing_policy(pki: Pki, fedmsg_signed: dict[str, dict[str, Any]]) -> None:
    """fedmsg's routing_policy: listed topics need a listed sender; unlisted topics pass unless nitpicky."""
    envelope = fedmsg_signed["good"]
    allowed = pki.settings(routing_policy={TOPIC: ("bodhi-app01.example.org",)})
    others = pki.settings(routing_policy={TOPIC: ("koji-hub01.example.org",)})
    elsewhere = {"org.fedoraproject.dev.koji.build": ("koji-hub01.example.org",)}
    assert Verifier(allowed).check(envelope).ok
    refused = Verifier(others).check(envelope)
    assert refused.reason == "routing-policy" and "bodhi-app01.example.org" in refused.detail
    assert Verifier(pki.settings(routing_policy=elsewhere)).check(envelope).ok
    nitpicky = Verifier(pki.settings(routing_policy=elsewhere, routing_nitpicky=True)).check(envelope)
    assert nitpicky.reason == "routing-policy"


def test_our_signed_messages_pass_fedmsg_validate(pki: Pki, fedmsg_python: str) -> None:
    """fedmsg.crypto.validate accepts what our signer produced and rejects it once tampered or off-policy."""
    signed = pki.signer("good")(unsigned())
    tampered = json.loads(json.dumps(signed))
    tampered["msg"]["agent"] = "mallory"
    config = {"ca_cert_location": str(pki.ca), "crl_location": str(pki.crl)}
    policy = dict(config, routing_policy={TOPIC: ["koji-hub01.example.org"]})
    answers = run_fedmsg(
        fedmsg_python,
        VALIDATE,
        [
            {"message": signed, "config": config},
            {"message": tampered, "config": config},
            {"message": pki.signer("revoked")(unsigned()), "config": config},
            {"message": signed, "config": policy},
        ],
    )
    assert answers == [True, False, False, False]


def test_publish_cli_signs_for_validating_fedmsg_consumers(pki: Pki, endpoint: str, fedmsg_python: str) -> None:
    """`fedmsg-notify publish --cert --key` sends messages that fedmsg.crypto.validate accepts and we verify."""
    crt, key = pki.dir / "good.crt", pki.dir / "good.key"

    async def receive() -> Message:
        subscriber = Subscriber([endpoint])
        try:
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fedmsg_notify", "publish", "--endpoint", endpoint, "--topic", TOPIC,
                "--msg", json.dumps(BODY), "--cert", str(crt), "--key", str(key), "--wait", "5",
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(30):
                message = await anext(subscriber.messages())
            _, stderr = await publisher.communicate()
            assert publisher.returncode == 0, stderr
            return message
        finally:
            subscriber.close()

    message = asyncio.run(receive())
    assert Verifier(pki.settings()).check(message.envelope).ok
    config = {"ca_cert_location": str(pki.ca), "crl_location": str(pki.crl)}
    assert run_fedmsg(fedmsg_python, VALIDATE, [{"message": message.envelope, "config": config}]) == [True]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--cert", "good.crt"], "--cert and --key go together"),
        (["--cert", "good.crt", "--key", "koji.key"], "does not belong to the certificate"),
        (["--cert", "good.crt", "--key", "missing.key"], "cannot read the private key"),
        (["--cert", "crl.pem", "--key", "good.key"], "not a PEM X.509 certificate"),
    ],
)
def test_publish_cli_signing_errors(pki: Pki, args: list[str], error: str, endpoint: str) -> None:
    """Bad --cert/--key arguments stop publish with a message naming the problem, before anything is sent."""
    argv = [a if a.startswith("--") else str(pki.dir / a) for a in args]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmsg_notify",
            "publish",
            "--endpoint",
            endpoint,
            "--topic",
            TOPIC,
            "--msg",
            "{}",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert error in proc.stderr
    assert "PRIVATE KEY" not in proc.stderr


# -- policy: drop or mark, counting, caching ---------------------------------------------


def test_admit_drops_or_marks_and_counts(
    pki: Pki, fedmsg_signed: dict[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """Invalid messages are dropped (or delivered marked unverified), logged with the reason and counted."""
    good = Message.from_envelope(fedmsg_signed["good"])
    forged = Message.from_envelope(fedmsg_signed["wrong-ca"])
    bare = Message.from_envelope(unsigned())
    dropper = Verifier(pki.settings())
    assert [dropper.admit(m) for m in (good, forged, bare, bare)] == [True, False, False, False]
    assert good.verified is True and forged.verified is False
    assert dropper.rejected == {"untrusted-certificate": 1, "unsigned": 2}
    assert dropper.counts["ok"] == 1
    assert f"{forged.msg_id}" in caplog.text and "untrusted-certificate" in caplog.text and "dropped" in caplog.text

    marker = Verifier(pki.settings(on_invalid="mark"))
    assert marker.admit(forged) is True
    assert forged.verified is False


def test_log_is_rate_limited_per_reason(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """A flood of unsigned messages produces a handful of log lines, not one per message."""
    verifier = Verifier(pki.settings())
    message = Message.from_envelope(unsigned())
    for _ in range(2000):
        verifier.admit(message)
    assert verifier.rejected == {"unsigned": 2000}
    # The first five, then every 1000th: the 1000th and the 2000th.
    counts = [int(r.getMessage().rsplit("[", 1)[1].split(" ")[0]) for r in caplog.records if "failed signature" in r.getMessage()]
    assert counts == [1, 2, 3, 4, 5, 1000, 2000]


def test_certificates_are_checked_once(pki: Pki, fedmsg_signed: dict[str, dict[str, Any]]) -> None:
    """Many messages from one sender reuse one cached certificate check, whatever the base64 line layout."""
    verifier = Verifier(pki.settings())
    envelope = dict(fedmsg_signed["good"])
    for _ in range(50):
        assert verifier.check(envelope).ok
    envelope["certificate"] = envelope["certificate"].replace("\n", "")
    assert verifier.check(envelope).ok
    assert len(verifier._cache) == 1


def test_ec_certificate_is_refused_cleanly(pki: Pki) -> None:
    """A certificate with a non-RSA key cannot carry a fedmsg signature and is refused, not crashed on."""
    envelope = pki.signer("good")(unsigned())
    ec_pem = (pki.dir / "ec.crt").read_bytes()
    from fedmsg_notify.bus.signatures import wrap_b64

    envelope["certificate"] = wrap_b64(ec_pem)
    assert Verifier(pki.settings()).check(envelope).reason == "bad-signature"
    with pytest.raises(SignatureConfigError, match="RSA"):
        Signer(pki.dir / "ec.crt", pki.dir / "ec.key")


def test_refreshed_crl_is_picked_up_while_running(
    pki: Pki, fedmsg_signed: dict[str, dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CRL replaced on disk takes effect within a minute without a restart; a broken one keeps the old CRL."""
    crl = tmp_path / "crl.pem"
    crl.write_bytes(pki.crl.read_bytes())
    now = [time.time()]
    verifier = Verifier(pki.settings(crl=crl), clock=lambda: now[0])
    good = fedmsg_signed["good"]
    assert verifier.check(good).ok
    serial = x509.load_pem_x509_certificate((pki.dir / "good.crt").read_bytes()).serial_number
    crl.write_bytes(make_crl(pki.authority, [REVOKED_SERIAL, serial]))
    assert verifier.check(good).ok  # files are looked at once a minute, not per message
    now[0] += 61
    assert verifier.check(good).reason == "revoked"
    crl.write_text("not a CRL")
    now[0] += 61
    assert verifier.check(good).reason == "revoked"
    assert "cannot be used, keeping the previous ones" in caplog.text


def test_unusable_ca_or_crl_is_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    """A missing CA file, a non-CA, or a CRL from another CA is refused at startup with the file named."""
    with pytest.raises(SignatureConfigError, match="cannot read the CA certificate"):
        Verifier(pki.settings(ca_cert=tmp_path / "nope.crt"))
    with pytest.raises(SignatureConfigError, match="CRL is not signed by the configured CA"):
        Verifier(pki.settings(ca_cert=pki.other_ca))
    with pytest.raises(SignatureConfigError, match="not a PEM certificate revocation list"):
        Verifier(pki.settings(crl=pki.ca))


# -- configuration -------------------------------------------------------------------------


def test_signatures_section_in_config(pki: Pki, tmp_path: Path) -> None:
    """The `signatures:` section is loaded with paths relative to the config file."""
    (tmp_path / "pki").symlink_to(pki.dir)
    config = tmp_path / "config.yaml"
    config.write_text(
        "signatures:\n"
        "  ca_cert: pki/ca.crt\n"
        "  crl: pki/crl.pem\n"
        "  routing_policy: {org.fedoraproject.prod.bodhi.update.comment: [bodhi-app01.example.org]}\n"
        "  routing_nitpicky: true\n"
        "  on_invalid: mark\n"
    )
    settings = load_config(config).signatures
    assert settings.validate and settings.on_invalid == "mark" and settings.routing_nitpicky
    assert settings.ca_cert == tmp_path / "pki" / "ca.crt"
    assert settings.crl == tmp_path / "pki" / "crl.pem"
    assert settings.routing_policy == {"org.fedoraproject.prod.bodhi.update.comment": ("bodhi-app01.example.org",)}
    assert not load_config(tmp_path / "none.yaml", "bus: {}\n").signatures.validate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("signatures: {validate: true}\n", "1:13: signatures: validation needs 'ca_cert"),
        ("signatures:\n  ca_cert: missing.crt\n", "2:12: "),
        ("signatures:\n  ca_cert: {pki}/ca.crt\n  crl: {pki}/other-ca.crt\n", "3:8: "),
        ("signatures: {ca_cert: x, on_invalid: deliver}\n", "signatures.on_invalid: expected 'drop' or 'mark'"),
        ("signatures: {ca_cert: x, validte: true}\n", "did you mean 'validate'"),
    ],
)
def test_signatures_config_errors(pki: Pki, tmp_path: Path, text: str, expected: str) -> None:
    """Signature settings that cannot work are reported at file:line:col, naming what is wrong."""
    config = tmp_path / "config.yaml"
    config.write_text(text.replace("{pki}", str(pki.dir)))
    with pytest.raises(ProblemsError) as caught:
        load_config(config)
    assert any(expected in str(p) for p in caught.value.problems), [str(p) for p in caught.value.problems]


def test_settings_from_fedmsg_d(pki: Pki, tmp_path: Path) -> None:
    """An existing fedmsg.d with validate_signatures and local CA/CRL files is honoured by the daemon's config."""
    fedmsg_d = tmp_path / "fedmsg.d"
    fedmsg_d.mkdir()
    (fedmsg_d / "ssl.py").write_text(
        "config = dict(\n"
        "    validate_signatures=True,\n"
        f"    ca_cert_location={str(pki.ca)!r},\n"
        f"    crl_location={str(pki.crl)!r},\n"
        "    routing_nitpicky=True,\n"
        "    routing_policy={'org.fedoraproject.prod.bodhi.update': ['bodhi-app01.example.org']},\n"
        ")\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"bus: {{fedmsg_config: {fedmsg_d}}}\n")
    settings = load_config(config).signatures
    assert settings.validate and settings.routing_nitpicky
    assert (settings.ca_cert, settings.crl) == (pki.ca, pki.crl)
    assert settings.routing_policy == {"org.fedoraproject.prod.bodhi.update": ("bodhi-app01.example.org",)}


@pytest.mark.parametrize(
    ("fedmsg", "error"),
    [
        ({"validate_signatures": True}, "ca_cert_location is not set"),
        ({"validate_signatures": True, "ca_cert_location": "https://fedoraproject.org/fedmsg/ca.crt"}, "remote URL"),
        (
            {"validate_signatures": True, "ca_cert_location": "/ca.crt", "crl_location": "https://x/crl.pem"},
            "crl_location is a remote URL",
        ),
        ({"validate_signatures": True, "ca_cert_location": "/ca.crt", "crypto_backend": "gpg"}, "only x509"),
        (
            {"validate_signatures": True, "ca_cert_location": "/ca.crt", "routing_policy": {"t": "name"}},
            "list of certificate names",
        ),
    ],
)
def test_fedmsg_d_settings_errors(fedmsg: dict[str, Any], error: str) -> None:
    """fedmsg.d signature settings we cannot honour (remote URLs, gpg, bad policy) are errors that say why."""
    with pytest.raises(SignatureConfigError, match=error):
        settings_from_fedmsg(fedmsg, source="/etc/fedmsg.d")


def test_fedmsg_d_remote_url_reported_in_config(tmp_path: Path) -> None:
    """With fedmsg's default remote CA URL, loading our config fails pointing at fedmsg_config."""
    fedmsg_d = tmp_path / "fedmsg.d"
    fedmsg_d.mkdir()
    (fedmsg_d / "ssl.py").write_text(
        "config = dict(validate_signatures=True, ca_cert_location='https://fedoraproject.org/fedmsg/ca.crt')\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"bus:\n  fedmsg_config: {fedmsg_d}\n")
    with pytest.raises(ProblemsError) as caught:
        load_config(config)
    assert "config.yaml:2:18:" in str(caught.value.problems[0]) and "remote URL" in str(caught.value.problems[0])


# -- the daemon ------------------------------------------------------------------------------


async def test_forged_messages_never_reach_a_recipient(pki: Pki, tmp_path: Path, endpoint: str) -> None:
    """With validation on, the daemon delivers the genuine message and drops forged, tampered and unsigned ones."""
    from fedmsg_notify.bus.zeromq import Publisher
    from fedmsg_notify.daemon import Daemon
    from fedmsg_notify.testing import RecordingBackend

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "all.yaml").write_text("rules:\n  - name: everything\n    match: {}\n    deliver: [{via: rec}]\n")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"bus: {{endpoints: ['{endpoint}']}}\n"
        "accounts: {rec: {backend: 'fedmsg_notify.testing:RecordingBackend'}}\n"
        f"rules: [{rules}]\n"
        f"state: {tmp_path / 'state.db'}\n"
        f"signatures: {{ca_cert: {pki.ca}, crl: {pki.crl}}}\n"
    )
    daemon = Daemon(load_config(config_path))
    ready = asyncio.Event()
    running = asyncio.create_task(daemon.run(ready))
    publisher = Publisher(endpoint, bind=True, wait=5.0)
    try:
        await asyncio.wait_for(ready.wait(), 30)
        good = pki.signer("good")(unsigned(body={"n": "good"}))
        tampered = json.loads(json.dumps(good))
        tampered["msg"]["n"] = "tampered"
        forged = pki.signer("wrong-ca")(unsigned(body={"n": "forged"}))
        revoked = pki.signer("revoked")(unsigned(body={"n": "revoked"}))
        bare = unsigned(body={"n": "unsigned"})
        for envelope in (tampered, forged, revoked, bare, good):
            await asyncio.to_thread(publisher.send_envelope, envelope)
        good_after = pki.signer("good")(unsigned(body={"n": "marker"}))
        await asyncio.to_thread(publisher.send_envelope, good_after)
        recorder = None
        async with asyncio.timeout(30):
            # The marker was sent last: once it is delivered, every earlier message was judged.
            while recorder is None or good_after["msg_id"] not in [item.msg_id for item in recorder.items]:
                await asyncio.sleep(0.05)
                recorder = RecordingBackend.instances.get("rec")
    finally:
        publisher.close(linger_ms=0)
        daemon.stop()
        await asyncio.wait_for(running, 30)
    assert [item.msg_id for item in recorder.items] == [good["msg_id"], good_after["msg_id"]]
    assert daemon.verifier is not None
    assert daemon.verifier.rejected == {"bad-signature": 1, "untrusted-certificate": 1, "revoked": 1, "unsigned": 1}
    status = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "status", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        "messages failing signature validation: 4 (bad-signature 1, revoked 1, unsigned 1, untrusted-certificate 1)"
        in status.stdout
    ), status.stdout + status.stderr


# -- canonical JSON fidelity -------------------------------------------------------------------

TRICKY_BODIES: list[Any] = [
    {"é": "✓", "emoji": "\U0001f600", "line": "a\u2028b", "nul": "\x00", "html": "</script>"},
    {"floats": [0.1, 1e-7, 1e22, -0.0, 3.141592653589793, 1.7976931348623157e308]},
    {"ints": [0, -1, 2**53 + 1, 2**64, -(2**70)]},
    {"B": 1, "a": 2, "_": 3, "A": 4, "é": 5, "10": 6, "9": 7},
    {"nested": [[[]], {}, [{"x": [None, True, False]}]]},
    {"escapes": 'quote " backslash \\ slash / tab \t newline \n cr \r'},
    [],
    "just a string",
    None,
    {"long": "x" * 5000},
]


def test_tricky_bodies_interoperate_both_ways(pki: Pki, fedmsg_python: str) -> None:
    """Non-ASCII, floats, big integers and odd keys sign and verify identically in fedmsg and here."""
    ours = [pki.signer("good")(unsigned(body=body)) for body in TRICKY_BODIES]
    config = {"ca_cert_location": str(pki.ca), "crl_location": str(pki.crl)}
    assert run_fedmsg(fedmsg_python, VALIDATE, [{"message": m, "config": config} for m in ours]) == [True] * len(ours)
    theirs = run_fedmsg(
        fedmsg_python,
        SIGN,
        [{"message": unsigned(body=body), "ssldir": str(pki.dir), "certname": "good"} for body in TRICKY_BODIES],
    )
    verifier = Verifier(pki.settings())
    for envelope in theirs:
        # As it arrives: canonical JSON on the wire, decoded by our bus decoder.
        frames = [envelope["topic"].encode(), canonical_json(envelope).encode()]
        assert verifier.check(decode_frames(frames).envelope).ok, envelope["msg"]


@settings(max_examples=100, deadline=None)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=10,
    ),
    key=st.sampled_from(["msg", "topic", "timestamp", "username", "i", "msg_id", "crypto", "extra"]),
    value=st.text(max_size=5) | st.integers(),
)
def test_any_change_to_a_signed_envelope_is_detected(pki: Pki, body: Any, key: str, value: Any) -> None:
    """Our signatures verify for any body, and changing any field (or adding one) is caught unless it changes nothing."""
    if "pair" not in _SIGNING:
        _SIGNING["pair"] = (pki.signer("good"), Verifier(pki.settings()))
    signer, verifier = _SIGNING["pair"]
    envelope = signer(unsigned(body=body))
    assert verifier.check(envelope).ok
    changed = dict(envelope, **{key: value})
    same = canonical_json(changed) == canonical_json(envelope)
    verdict = verifier.check(changed)
    if same:
        assert verdict.ok
    else:
        assert verdict.reason in ("bad-signature", "unsupported-crypto"), verdict


_SIGNING: dict[str, tuple[Signer, Verifier]] = {}


async def test_mark_mode_delivers_unverified_messages_marked(pki: Pki, tmp_path: Path, endpoint: str) -> None:
    """With `on_invalid: mark` a forged message is still delivered, and templates can say it is unverified."""
    from fedmsg_notify.bus.zeromq import Publisher
    from fedmsg_notify.daemon import Daemon
    from fedmsg_notify.testing import RecordingBackend

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "all.yaml").write_text("rules:\n  - name: everything\n    match: {}\n    deliver: [{via: marked}]\n")
    (tmp_path / "templates" / "recording").mkdir(parents=True)
    (tmp_path / "templates" / "recording" / "default.j2").write_text(
        "{{ 'UNVERIFIED ' if verified is sameas false else 'verified ' }}{{ body.n }}"
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"bus: {{endpoints: ['{endpoint}']}}\n"
        "accounts: {marked: {backend: 'fedmsg_notify.testing:RecordingBackend'}}\n"
        f"rules: [{rules}]\n"
        f"templates: [{tmp_path / 'templates'}]\n"
        f"state: {tmp_path / 'state.db'}\n"
        f"signatures: {{ca_cert: {pki.ca}, crl: {pki.crl}, on_invalid: mark}}\n"
    )
    daemon = Daemon(load_config(config_path))
    ready = asyncio.Event()
    running = asyncio.create_task(daemon.run(ready))
    publisher = Publisher(endpoint, bind=True, wait=5.0)
    try:
        await asyncio.wait_for(ready.wait(), 30)
        for envelope in (
            pki.signer("wrong-ca")(unsigned(body={"n": "forged"})),
            pki.signer("good")(unsigned(body={"n": "good"})),
        ):
            await asyncio.to_thread(publisher.send_envelope, envelope)
        async with asyncio.timeout(30):
            while len(getattr(RecordingBackend.instances.get("marked"), "items", [])) < 2:
                await asyncio.sleep(0.05)
    finally:
        publisher.close(linger_ms=0)
        daemon.stop()
        await asyncio.wait_for(running, 30)
    texts = sorted(item.rendered["text"] for item in RecordingBackend.instances["marked"].items)
    assert texts == ["UNVERIFIED forged", "verified good"]
