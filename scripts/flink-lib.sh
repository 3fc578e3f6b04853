# What the scripts that run Apache Flink share (sourced, not run).

# flink_python [PACKAGE..]: the Python of a virtual environment under ~/.cache
# ($OXFLOW_FLINK_VENV) with PyFlink (apache-flink $FLINK_VERSION, default 2.3.0, which brings
# the Flink runtime; Java 17 runs it) and each PACKAGE (a module of that name), installed from
# PyPI the first time any is missing.
flink_python() {
  local venv=${OXFLOW_FLINK_VENV:-$HOME/.cache/oxflow-flink-venv}
  local packages=("apache-flink==${FLINK_VERSION:-2.3.0}" "$@")
  local modules=pyflink
  for p in "$@"; do modules="$modules, $p"; done
  if ! "$venv/bin/python" -c "import $modules" 2>/dev/null; then
    echo "installing ${packages[*]} into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q "${packages[@]}" >&2
  fi
  echo "$venv/bin/python"
}
