# Synapse (a Matrix homeserver) for the Matrix backend's tests, in a virtualenv of its own
# (.venv-synapse) so its pins never meet the project's. tests/synapseserver.py finds it
# there (or through SYNAPSE_PYTHON).
setup_synapse() {
  if [ ! -x .venv-synapse/bin/python ] || ! .venv-synapse/bin/python -c 'import synapse' 2>/dev/null; then
    "$PY" -m venv .venv-synapse
    .venv-synapse/bin/pip install -q --upgrade pip >/dev/null
    .venv-synapse/bin/pip install -q 'matrix-synapse'
  fi
  export SYNAPSE_PYTHON="$PWD/.venv-synapse/bin/python"
}
SETUP_STEPS="$SETUP_STEPS setup_synapse"
