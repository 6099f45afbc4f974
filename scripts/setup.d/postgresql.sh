# PostgreSQL: the shared store of a cluster of daemons (tests/postgresserver.py makes a
# throwaway cluster with initdb/pg_ctl as the postgres user, on a free port).
APT_PACKAGES="$APT_PACKAGES postgresql"
