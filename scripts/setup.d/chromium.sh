# Headless Debian chromium and its WebDriver for the web page's browser test (selenium
# drives the system browser; nothing is downloaded by the test client).
APT_PACKAGES="$APT_PACKAGES chromium chromium-driver"
