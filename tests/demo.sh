#!/bin/sh
# Show a delegation: start a target instance and a source instance (with
# delegate.so loaded), submit a job in the source with
# --dependency=delegate:TARGET, and print what both instances saw.
#
# Usage: tests/demo.sh [PLUGIN [HANDLER]]   (default: the installed ones)
# 'make demo' runs it with the plugin and handler of the build tree.
set -e

plugin=${1:-delegate.so}
handler=${2:-}
work=$(mktemp -d "${TMPDIR:-/tmp}/delegate-demo.XXXXXX")
trap 'rm -f "$work/target.run"; wait; rm -rf "$work"' EXIT

echo "== starting the target instance"
touch "$work/target.run"
flux start sh -c "flux getattr local-uri > $work/target.uri.tmp &&
                  mv $work/target.uri.tmp $work/target.uri &&
                  while test -e $work/target.run; do sleep 0.1; done" &
while ! test -s "$work/target.uri"; do sleep 0.1; done
target=$(cat "$work/target.uri")
echo "   target URI: $target"

cat > "$work/source.sh" <<SCRIPT
set -e
flux jobtap load "$plugin" ${handler:+handler="$handler"} ${DELEGATE_PYTHONPATH:+pythonpath="$DELEGATE_PYTHONPATH"}
echo "== in the source instance:"
echo "   flux submit --dependency=delegate:$target sh -c 'hostname; exit 3'"
id=\$(flux submit --dependency=delegate:$target sh -c 'hostname; exit 3')
flux job status \$id && rc=0 || rc=\$?
echo "== source job \$id ended; flux job status says: \$rc"
echo "== its eventlog:"
flux job eventlog \$id | sed 's/^/   /'
remote=\$(flux job eventlog -f json \$id | sed -n 's/.*"name":"delegated".*"jobid":\([0-9]*\).*/\1/p')
echo "== the job in the target instance (FLUX_URI=$target):"
FLUX_URI=$target flux jobs -a -o "   {id.f58:>12} {name:<8} {state:<8} {returncode}" 
echo "== its output:"
FLUX_URI=$target flux job attach \$remote | sed 's/^/   /' || true
SCRIPT
echo "== starting the source instance"
flux start sh "$work/source.sh"
