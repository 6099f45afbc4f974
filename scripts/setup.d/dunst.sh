# dunst on Xvfb: the desktop tests' real notification daemon (tests/dunstserver.py).
APT_PACKAGES="$APT_PACKAGES dunst xvfb"
