#!/bin/sh
# Issue 12, sixth pass: P4/P5 before/after the scoped verify in one VM session (bench/README.md).
#   scripts/vm-run sh bench/p4_pass.sh
mkdir -p build/vm/p4b build/vm/p4a
uptime
echo "=== before (scoped verify off)"
IPVLAN_RECONCILER_SCOPED_VERIFY=0 python bench/run.py --only P4,P5 --daemon-small 10 --daemon-big 1000 --edits 5 --logdir build/vm/p4b --json build/vm/p4-before.json
uptime
echo "=== after"
python bench/run.py --only P4,P5 --daemon-small 10 --daemon-big 1000 --edits 5 --idle-seconds 60 --logdir build/vm/p4a --json build/vm/p4-after.json
uptime
