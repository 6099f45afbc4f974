# What a fresh Debian 12 lacks for the suite itself: a C compiler and Python headers
# (dbus-python builds from source), venv, and systemd (systemd-analyze verifies the unit).
APT_PACKAGES="$APT_PACKAGES build-essential python3-dev python3-venv systemd"
