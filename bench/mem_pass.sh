#!/bin/sh
# Issue 12 (branch mem), the daemon's memory in one place: P4/P5 at 1,000 before/after in one VM
# session. "before" is the commit before the change, extracted by hand into build/before
# (git archive 0287fb5 | tar -x -C build/before), run from there (cwd first on sys.path).
#   scripts/vm-run sh bench/mem_pass.sh
mkdir -p build/vm/memb build/vm/mema
uptime
echo "=== before (0287fb5)"
(cd build/before && python bench/run.py --only P5 --daemon-small 10 --daemon-big 1000 --edits 5 \
    --logdir ../vm/memb --json ../vm/mem-before.json)
uptime
echo "=== after"
python bench/run.py --only P5 --daemon-small 10 --daemon-big 1000 --edits 5 --logdir build/vm/mema --json build/vm/mem-after.json
uptime
