"""Stage 4, rendering: sandboxed jinja2 templates and the one sanitiser every backend uses."""
