#!/usr/bin/env bash
# Lead's device call: runs each helper's .gpu-pack<NAME>/run.sh given as arguments, one after the
# other, each under its own timeout, and returns their logs under $OUT/<NAME>/.
set -u
export PYTHONUNBUFFERED=1
root=$OUT
exec > >(tee -a "$root/m.log") 2>&1
echo "=== start $(date -u +%T)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for spec in "$@"; do
  name=${spec%%:*}; secs=${spec#*:}
  t0=$SECONDS
  echo "===== $name (limit $secs s) $(date -u +%T)"
  mkdir -p $root/$name
  timeout -k 5 $secs bash .gpu-pack$name/run.sh > $root/$name/stdout.txt 2>&1
  echo "===== $name rc=$? ($((SECONDS-t0)) s)"
  tail -c 1900 $root/$name/stdout.txt
  rm -rf .gpu$name
  (cd $root && tar cJf $name.tar.xz $name && rm -rf $name)
done
echo "=== end $(date -u +%T)"
ls -la $root
