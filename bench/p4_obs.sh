#!/bin/sh
# Issue 12, eighth pass (branch obs): P4 with the scoped first observation, then without it
# (IPVLAN_RECONCILER_SCOPED_OBSERVE=0), in one VM session (bench/README.md).
#   scripts/vm-run sh bench/p4_obs.sh
mkdir -p build/vm/p4obs-after build/vm/p4obs-before
uptime
echo "=== after (scoped first observation)"
python bench/run.py --only P4 --daemon-small 10 --daemon-big 1000 --edits 5 --logdir build/vm/p4obs-after --json build/vm/p4obs-after.json
uptime
echo "=== before (IPVLAN_RECONCILER_SCOPED_OBSERVE=0)"
IPVLAN_RECONCILER_SCOPED_OBSERVE=0 python bench/run.py --only P4 --daemon-small 10 --daemon-big 1000 --edits 5 --logdir build/vm/p4obs-before --json build/vm/p4obs-before.json
uptime
