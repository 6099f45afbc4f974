"""The daemon's YAML configuration: strict validation with ``file:line:col`` errors.

Sketch (see SPEC "Configuration")::

    bus: {endpoints: [tcp://127.0.0.1:9940], subscribe: [org.fedoraproject.]}
    accounts: {mail: {backend: email, smtp: "smtp://localhost:25", from: "..."}}
    rules: [/etc/fedmsg-notify/rules.d]
    templates: [/etc/fedmsg-notify/templates]
    state: /var/lib/fedmsg-notify/state.db

Unknown keys are errors; each account is validated by its backend's own model, so a
misspelled option of one backend is reported where it is written.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fedmsg_notify.backend import AccountOptions, Backend
from fedmsg_notify.backends import backend_class, backend_names
from fedmsg_notify.bus.amqp import AmqpSettings
from fedmsg_notify.bus.envelope import DEFAULT_MAX_DEPTH, DEFAULT_MAX_STRING
from fedmsg_notify.bus.fedmsg_config import FedmsgConfigError, endpoints_from, load_fedmsg_config
from fedmsg_notify.bus.signatures import SignatureConfigError, SignatureSettings, Verifier, settings_from_fedmsg
from fedmsg_notify.config.redact import register_secrets
from fedmsg_notify.config.validation import StrictModel, did_you_mean, validate
from fedmsg_notify.config.yaml_positions import LocatedDocument, Position, Problem, ProblemsError, load_located
from pydantic import AfterValidator, Field

log = logging.getLogger("fedmsg_notify.config")

SYSTEM_CONFIG = Path("/etc/fedmsg-notify/config.yaml")
USER_CONFIG = Path("~/.config/fedmsg-notify/config.yaml")
AMQP_URL_RE = re.compile(r"^amqps?://[^\s/]*(/\S*)?$")
ENDPOINT_RE = re.compile(r"^(tcp://[^\s:]+:(\d+|\*)|ipc://\S+|inproc://\S+)$")


def shipped_rules_dir() -> Path:
    return Path(str(resources.files("fedmsg_notify.example_rules")))


def shipped_templates_dir() -> Path:
    return Path(str(resources.files("fedmsg_notify.templates")))


def default_state_path() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/fedmsg-notify/state.db")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "fedmsg-notify" / "state.db"


def _check_endpoint(url: str) -> str:
    if not ENDPOINT_RE.match(url):
        raise ValueError(f"endpoint {url!r} is not a ZeroMQ address like tcp://host:port")
    return url


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


def _check_amqp_url(url: str) -> str:
    if not AMQP_URL_RE.match(url):
        raise ValueError(f"url {url!r} is not an AMQP address like amqps://user:@host/%2Fvhost")
    return url


class AmqpSection(StrictModel):
    """fedora-messaging over AMQP (SPEC "The bus today")."""

    url: Annotated[str, AfterValidator(_check_amqp_url)]
    # Durable and named (a restart misses nothing); omitted: an exclusive, auto-deleted queue.
    queue: str | None = Field(default=None, min_length=1, max_length=255)
    exchange: str = Field(default="amq.topic", min_length=1, max_length=255)
    routing_keys: list[str] = Field(default_factory=lambda: ["#"], min_length=1)
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    passive_declares: bool = False
    prefetch: int = Field(default=100, ge=1, le=65535)


class BusSection(StrictModel):
    amqp: AmqpSection | None = None
    endpoints: list[Endpoint] = Field(default_factory=list)
    fedmsg_config: str | None = None
    subscribe: list[str] = Field(default_factory=lambda: [""])
    # Larger messages are counted as malformed and dropped before JSON parsing.
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    # ZeroMQ receive high-water mark: messages buffered while the daemon is busy.
    receive_queue: int = Field(default=100_000, ge=1)
    # Deeper JSON or longer strings are counted as malformed and dropped before parsing.
    max_json_depth: int = Field(default=DEFAULT_MAX_DEPTH, ge=4, le=500)
    max_string_length: int = Field(default=DEFAULT_MAX_STRING, ge=1024)


class SignaturesSection(StrictModel):
    """fedmsg x509 signature checking; the same knobs as fedmsg's own configuration."""

    # "validate" would shadow a pydantic method, hence the alias.
    validate_signatures: bool = Field(default=True, alias="validate")
    ca_cert: str | None = None
    crl: str | None = None
    # topic -> certificate common names allowed to send it (fedmsg's routing_policy).
    routing_policy: dict[str, list[str]] = Field(default_factory=dict)
    routing_nitpicky: bool = False
    on_invalid: Literal["drop", "mark"] = "drop"


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen {value!r} is not HOST:PORT like 127.0.0.1:8080")
    return value


class WebSection(StrictModel):
    """The HTTP server for feeds, the live page, /healthz and /metrics."""

    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:8080"
    # The public address feeds link to (behind a reverse proxy); default: the request's host.
    base_url: str | None = None
    max_clients: int = Field(default=100, ge=1, description="concurrent live (SSE) clients")
    heartbeat: float = Field(default=15.0, gt=0, le=300, description="seconds between SSE keep-alives")


class ConfigFile(StrictModel):
    bus: BusSection = Field(default_factory=BusSection)
    accounts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rules: list[str] | None = None
    templates: list[str] = Field(default_factory=list)
    # Directories of per-service metadata files that add to or override the shipped ones.
    services: list[str] = Field(default_factory=list)
    state: str | None = None
    # `state: postgresql://user@host:port/db` (several daemons, one store): the password
    # comes from this file, or from libpq's PGPASSFILE / ~/.pgpass — never from the URL.
    state_password_file: str | None = None
    # Seconds a daemon's claim on queued deliveries lasts before another daemon may take them.
    state_lease: float = Field(default=60.0, gt=0)
    signatures: SignaturesSection | None = None
    web: WebSection | None = None
    # Processes that compute metadata, match rules and render beside the daemon's own
    # (0: all on the daemon's event loop). 1 puts a second core to work on a busy bus.
    intake_processes: int = Field(default=0, ge=0, le=16)


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    backend: type[Backend]
    options: AccountOptions
    position: Position


@dataclass(frozen=True, slots=True)
class Config:
    """A fully validated configuration with paths resolved."""

    source: str
    endpoints: tuple[str, ...]
    subscribe: tuple[str, ...]
    max_message_bytes: int
    receive_queue: int
    accounts: dict[str, Account]
    rule_paths: tuple[Path, ...]
    template_paths: tuple[Path, ...]
    service_paths: tuple[Path, ...]
    state_path: Path
    fedmsg: dict[str, Any] = field(default_factory=dict)
    signatures: SignatureSettings = field(default_factory=SignatureSettings)
    web: WebSection | None = None
    max_json_depth: int = DEFAULT_MAX_DEPTH
    max_string_length: int = DEFAULT_MAX_STRING
    # Where `state:` is written in the config (None: the default), for errors about the state.
    state_where: Position | None = None
    # fedora-messaging over AMQP; None when only ZeroMQ endpoints are configured.
    amqp: AmqpSettings | None = None
    # Set for a PostgreSQL store (then state_path is unused).
    state_url: str | None = None
    state_password_file: Path | None = None
    state_lease: float = 60.0
    intake_processes: int = 0


def find_config_file(explicit: str | None) -> Path | None:
    """``-c FILE``, else ``$FEDMSG_NOTIFY_CONFIG``, else the system file, else the user's."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("FEDMSG_NOTIFY_CONFIG")
    if env:
        return Path(env)
    for candidate in (SYSTEM_CONFIG, USER_CONFIG.expanduser()):
        if candidate.exists():
            return candidate
    return None


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Load and validate one configuration file; raise :class:`ProblemsError` with every problem."""
    doc = load_located(path, text)
    return config_from_document(doc)


def config_from_document(doc: LocatedDocument) -> Config:
    data = {} if doc.data is None else doc.data
    parsed, problems = validate(ConfigFile, data, doc)
    raw_accounts = data.get("accounts") if isinstance(data, dict) else None
    # Accounts are checked even when other sections are broken, so one run of
    # `check` reports every problem.
    accounts = _accounts(raw_accounts, doc, problems) if isinstance(raw_accounts, dict) else {}
    if parsed is None:
        raise ProblemsError(problems)
    base = Path(doc.file).resolve().parent

    endpoints = list(parsed.bus.endpoints)
    fedmsg: dict[str, Any] = {}
    if parsed.bus.fedmsg_config:
        try:
            fedmsg = load_fedmsg_config(_resolve(base, parsed.bus.fedmsg_config))
            endpoints += [url for url in endpoints_from(fedmsg) if url not in endpoints]
        except FedmsgConfigError as exc:
            problems.append(Problem(doc.where(("bus", "fedmsg_config")), str(exc)))
    signatures = _signatures(parsed, fedmsg, base, doc, problems)
    amqp = _amqp(parsed.bus.amqp, base, doc, problems) if parsed.bus.amqp is not None else None
    state_url = _state_url(parsed.state, doc, problems)
    if problems:
        raise ProblemsError(problems)
    rules = parsed.rules if parsed.rules is not None else [str(shipped_rules_dir())]
    return Config(
        source=doc.file,
        endpoints=tuple(endpoints),
        subscribe=tuple(parsed.bus.subscribe),
        max_message_bytes=parsed.bus.max_message_bytes,
        receive_queue=parsed.bus.receive_queue,
        accounts=accounts,
        rule_paths=tuple(_resolve(base, p) for p in rules),
        template_paths=tuple(_resolve(base, p) for p in parsed.templates),
        service_paths=tuple(_resolve(base, p) for p in parsed.services),
        state_path=_resolve(base, parsed.state) if parsed.state and not state_url else default_state_path(),
        fedmsg=fedmsg,
        signatures=signatures,
        web=parsed.web,
        max_json_depth=parsed.bus.max_json_depth,
        max_string_length=parsed.bus.max_string_length,
        state_where=doc.where(("state",)) if parsed.state else None,
        amqp=amqp,
        state_url=state_url,
        state_password_file=_resolve(base, parsed.state_password_file) if parsed.state_password_file else None,
        state_lease=parsed.state_lease,
        intake_processes=parsed.intake_processes,
    )


def _amqp(section: AmqpSection, base: Path, doc: LocatedDocument, problems: list[Problem]) -> AmqpSettings:
    """The ``bus.amqp`` settings; certificate files must exist and be readable, cert and key go together."""
    where = ("bus", "amqp")
    files: dict[str, Path | None] = {}
    for name in ("ca_cert", "cert", "key"):
        value = getattr(section, name)
        path = _resolve(base, value) if value else None
        files[name] = path
        if path is not None:
            try:
                path.read_bytes()
            except OSError as exc:
                problems.append(
                    Problem(doc.where((*where, name)), f"bus.amqp.{name}: cannot read {path}: {exc.strerror}")
                )
    if (files["cert"] is None) != (files["key"] is None) and files["key"] is not None:
        problems.append(Problem(doc.where((*where, "key")), "bus.amqp: 'key' needs 'cert' (the client certificate)"))
    if files["cert"] is not None and not section.url.startswith("amqps://"):
        problems.append(Problem(doc.where((*where, "cert")), "bus.amqp: a client certificate needs an amqps:// url"))
    settings = AmqpSettings(
        url=section.url,
        queue=section.queue,
        exchange=section.exchange,
        routing_keys=tuple(section.routing_keys),
        ca_cert=files["ca_cert"],
        cert=files["cert"],
        key=files["key"],
        passive_declares=section.passive_declares,
        prefetch=section.prefetch,
    )
    if not problems and settings.url.startswith("amqps://"):
        try:
            settings.ssl_context()
        except (OSError, ValueError) as exc:
            problems.append(Problem(doc.where(where), f"bus.amqp: the TLS certificates do not load: {exc}"))
    return settings


def _state_url(state: str | None, doc: LocatedDocument, problems: list[Problem]) -> str | None:
    """``state:`` as a PostgreSQL URL, or ``None`` for a SQLite file; a password in it is refused."""
    if not state or not state.startswith(("postgresql://", "postgres://")):
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(state)
        has_password = parts.password is not None
    except ValueError as exc:
        problems.append(Problem(doc.where(("state",)), f"state: not a PostgreSQL URL: {exc}"))
        return None
    if has_password or "password=" in parts.query:
        problems.append(
            Problem(
                doc.where(("state",)),
                "state: no password in the URL (it would show in logs and `ps`); put it in"
                " 'state_password_file' or ~/.pgpass",
            )
        )
        return None
    return state


def _signatures(
    parsed: ConfigFile, fedmsg: dict[str, Any], base: Path, doc: LocatedDocument, problems: list[Problem]
) -> SignatureSettings:
    """Our ``signatures:`` section if present, else fedmsg.d's keys; the CA and CRL are loaded once to check them."""
    section = parsed.signatures
    if section is None:
        if not fedmsg.get("validate_signatures"):
            return SignatureSettings()
        where: tuple[str, ...] = ("bus", "fedmsg_config")
        try:
            settings = settings_from_fedmsg(fedmsg, source=str(parsed.bus.fedmsg_config))
        except SignatureConfigError as exc:
            problems.append(Problem(doc.where(where), str(exc)))
            return SignatureSettings()
    else:
        where = ("signatures",)
        settings = SignatureSettings(
            validate=section.validate_signatures,
            ca_cert=_resolve(base, section.ca_cert) if section.ca_cert else None,
            crl=_resolve(base, section.crl) if section.crl else None,
            routing_policy={topic: tuple(names) for topic, names in section.routing_policy.items()},
            routing_nitpicky=section.routing_nitpicky,
            on_invalid=section.on_invalid,
            source=doc.file,
        )
        if settings.validate and settings.ca_cert is None:
            problems.append(Problem(doc.where(where), "signatures: validation needs 'ca_cert: <CA certificate file>'"))
            return settings
    if settings.validate:
        try:
            Verifier(settings)
        except SignatureConfigError as exc:
            key = "crl" if settings.crl is not None and str(exc).startswith(str(settings.crl)) else "ca_cert"
            at = (*where, key) if section is not None else where
            problems.append(Problem(doc.where(at), str(exc)))
    return settings


def _accounts(raw: dict[str, Any], doc: LocatedDocument, problems: list[Problem]) -> dict[str, Account]:
    accounts: dict[str, Account] = {}
    known = backend_names()
    for name, options in raw.items():
        where = ("accounts", name)
        if not isinstance(options, dict):
            problems.append(Problem(doc.where(where), f"account '{name}' must be a mapping with a 'backend' key"))
            continue
        backend_name = options.get("backend")
        if not isinstance(backend_name, str):
            problems.append(Problem(doc.where(where), f"account '{name}' needs 'backend: <one of {', '.join(known)}>'"))
            continue
        try:
            backend = backend_class(backend_name)
        except KeyError:
            problems.append(
                Problem(
                    doc.where((*where, "backend")),
                    f"unknown backend '{backend_name}' for account '{name}' "
                    f"(expected one of: {', '.join(known)}){did_you_mean(backend_name, known)}",
                )
            )
            continue
        parsed, found = validate(backend.Account, options, doc, where)
        problems.extend(found)
        if parsed is not None:
            # From here on the account's passwords and tokens are masked in every log line.
            register_secrets(parsed)
            accounts[name] = Account(name=name, backend=backend, options=parsed, position=doc.where(where, key=True))
    return accounts


def default_config_text() -> str:
    return resources.files("fedmsg_notify.data").joinpath("default-config.yaml").read_text(encoding="utf-8")


def load_cli_config(explicit: str | None) -> Config:
    """The config named on the command line or found in the usual places, else embedded defaults."""
    path = find_config_file(explicit)
    if path is None:
        log.info("no configuration file found; using embedded defaults")
        return load_config("<embedded defaults>", default_config_text())
    if not path.exists():
        raise ProblemsError([_missing(path)])
    return load_config(path)


def _missing(path: Path) -> Problem:
    return Problem(Position(str(path), 1, 1), "configuration file does not exist")
