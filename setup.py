"""Packaging for fedmsg-notify.

The source tree keeps the SPEC's top-level folders (``notifier/``, ``backends/``,
``rules/``, ``templates/``) but everything installs under the single namespace
``fedmsg_notify`` through ``package_dir``, so no generic top-level module names
(``backends``, ``notifier``) land in site-packages.
"""

from setuptools import setup

EXTRAS = {
    "irc": ["irc>=20.0"],
    "email": ["aiosmtplib>=3.0"],
    "desktop": ["notify2>=0.3", "dbus-python>=1.3"],
    "mastodon": ["httpx>=0.27"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
EXTRAS["test"] = EXTRAS["all"] + [
    # The packaging test builds the wheel without build isolation (no network needed).
    "setuptools>=68",
    "wheel",
    "pytest>=8",
    "pytest-asyncio>=0.23",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "aiosmtpd>=1.4",
    "trustme>=1.1",
    "python-dbusmock>=0.30",
    "mypy>=1.10",
    "ruff>=0.5",
    "types-PyYAML",
]

setup(
    name="fedmsg-notify",
    version="0.1.0",
    description="Notification fan-out daemon for fedmsg (ZeroMQ) message buses",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="LGPL-2.1-or-later",
    python_requires=">=3.11",
    package_dir={
        "fedmsg_notify": "notifier",
        "fedmsg_notify.services": "notifier/services",
        "fedmsg_notify.data": "notifier/data",
        "fedmsg_notify.backends": "backends",
        "fedmsg_notify.templates": "templates",
        "fedmsg_notify.example_rules": "rules",
    },
    packages=[
        "fedmsg_notify",
        "fedmsg_notify.services",
        "fedmsg_notify.data",
        "fedmsg_notify.backends",
        "fedmsg_notify.backends.email",
        "fedmsg_notify.backends.irc",
        "fedmsg_notify.templates",
        "fedmsg_notify.example_rules",
    ],
    package_data={
        "fedmsg_notify": ["py.typed"],
        "fedmsg_notify.services": ["*.yaml"],
        "fedmsg_notify.data": ["*.jsonl", "*.yaml", "*.service", "icons/*"],
        "fedmsg_notify.templates": ["*/*.j2"],
        "fedmsg_notify.example_rules": ["*.yaml"],
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
        "console_scripts": ["fedmsg-notify = fedmsg_notify.cli:main"],
        "fedmsg_notify.backends": [],
    },
    data_files=[("lib/systemd/system", ["fedmsg-notify.service"])],
)
