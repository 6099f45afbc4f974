"""Packaging for fedmsg-notify.

The source tree keeps the SPEC's top-level folders (``notifier/``, ``backends/``,
``rules/``, ``templates/``) but everything installs under the single namespace
``fedmsg_notify`` through ``package_dir``, so no generic top-level module names
(``backends``, ``notifier``) land in site-packages.
"""

from pathlib import Path

from setuptools import setup

# Source folder → installed package; every folder below them with an __init__.py is a
# subpackage, found by walking the tree so a new stage or backend cannot be left out.
ROOTS = {
    "fedmsg_notify": "notifier",
    "fedmsg_notify.backends": "backends",
    "fedmsg_notify.templates": "templates",
    "fedmsg_notify.example_rules": "rules",
}


def _packages() -> tuple[dict[str, str], list[str]]:
    package_dir: dict[str, str] = {}
    packages: list[str] = []
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        for init in sorted(Path(folder).rglob("__init__.py")):
            parts = init.parent.relative_to(folder).parts
            if "__pycache__" in parts:
                continue
            packages.append(".".join((name, *parts)))
    return package_dir, packages


PACKAGE_DIR, PACKAGES = _packages()

EXTRAS = {
    "irc": ["irc>=20.0"],
    "email": ["aiosmtplib>=3.0"],
    "desktop": ["notify2>=0.3", "dbus-python>=1.3"],
    "mastodon": ["httpx>=0.27"],
    # fedora-messaging over AMQP: the client, the library and the common schema packages.
    "amqp": [
        "aio-pika>=9.4",
        "fedora-messaging>=3.5",
        "bodhi-messages",
        "koji-fedoramessaging-messages",
        "pagure-messages",
        "copr-messaging",
        "anitya-schema",
        "noggin-messages",
    ],
    # `state: postgresql://...`: several daemons sharing one store.
    "postgresql": ["psycopg[binary]>=3.1"],
    "matrix": ["mautrix>=0.20"],
    "web": ["aiohttp>=3.9", "feedgen>=1.0", "prometheus-client>=0.20"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
EXTRAS["test"] = EXTRAS["all"] + [
    # The packaging test builds the wheel without build isolation (no network needed).
    "setuptools>=68",
    "wheel",
    "pytest>=8",
    "pytest-asyncio>=0.23",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",
    "hypothesis>=6.100",
    "aiosmtpd>=1.4",
    "trustme>=1.1",
    "python-dbusmock>=0.30",
    "mypy>=1.10",
    "ruff>=0.5",
    "types-PyYAML",
    "feedparser>=6.0",
    "selenium>=4.20",
]

setup(
    name="fedmsg-notify",
    version="0.1.0",
    description="Notification fan-out daemon for Fedora-style message buses (fedmsg over ZeroMQ)",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="LGPL-2.1-or-later",
    python_requires=">=3.11",
    package_dir=PACKAGE_DIR,
    packages=PACKAGES,
    package_data={
        "fedmsg_notify": ["py.typed"],
        "fedmsg_notify.meta.services": ["*.yaml"],
        "fedmsg_notify.data": ["*.jsonl", "*.yaml", "*.service", "icons/*"],
        "fedmsg_notify.templates": ["*/*.j2"],
        "fedmsg_notify.backends.web": ["static/*"],
        "fedmsg_notify.example_rules": ["*.yaml", "matrix/*.yaml"],
    },
    include_package_data=False,
    install_requires=[
        "pyzmq>=25",
        "PyYAML>=6",
        "pydantic>=2.5",
        "jinja2>=3.1",
        "google-re2>=1.1",
        "cryptography>=42",
        # The outbox's rendered parts and metadata (written per delivery, read per send).
        "orjson>=3.9",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["fedmsg-notify = fedmsg_notify.commands.cli:main"],
        "fedmsg_notify.backends": [],
    },
    data_files=[("lib/systemd/system", ["fedmsg-notify.service"])],
)
