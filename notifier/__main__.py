"""``python -m fedmsg_notify`` runs the command line."""

from fedmsg_notify.commands.cli import main

raise SystemExit(main())
