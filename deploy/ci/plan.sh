#!/bin/sh
# CI dry run for ipvlan-reconciler manifests: validate, then show the plan.
#
#   deploy/ci/plan.sh [MANIFEST_DIR...]        (default: manifests.d)
#
# Runs unprivileged: `ipvlanctl plan --offline` diffs against an empty host, or against a
# host's live state when LIVE_STATE names a file saved with
# `ipvlanctl status --format json` on that host (then the plan is what `apply` would do
# there).
#
# Exit status: 0 valid (with or without changes), 1 invalid manifests or error,
# 2 changes when FAIL_ON_CHANGES=1 (e.g. to require an empty plan on a release branch).
#
# Environment: IPVLANCTL (command, default ipvlanctl), LIVE_STATE (file), STATE_DIR (the
# host's state directory copy, with LIVE_STATE), FAIL_ON_CHANGES (1 to fail on changes),
# PLAN_JSON (also write the plan as JSON to this file, e.g. for an artifact).
# On GitHub Actions the plan is added to the job summary ($GITHUB_STEP_SUMMARY).
set -u

IPVLANCTL=${IPVLANCTL:-ipvlanctl}
[ $# -gt 0 ] || set -- manifests.d

# shellcheck disable=SC2086  # IPVLANCTL may be a command with arguments
if ! $IPVLANCTL validate "$@"; then
    echo "plan.sh: the manifests are invalid (errors above, as file:line:col)" >&2
    exit 1
fi

opts="--offline --detailed-exitcode"
if [ -n "${LIVE_STATE:-}" ]; then
    opts="$opts --live-state $LIVE_STATE"
    [ -n "${STATE_DIR:-}" ] && opts="$opts --state-dir $STATE_DIR"
fi

out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086
$IPVLANCTL plan $opts "$@" >"$out"
rc=$?
cat "$out"

if [ -n "${PLAN_JSON:-}" ] && [ "$rc" -ne 1 ]; then
    # shellcheck disable=SC2086
    $IPVLANCTL plan $opts --format json "$@" >"$PLAN_JSON"
    [ $? -eq 1 ] && { echo "plan.sh: writing $PLAN_JSON failed" >&2; exit 1; }
fi

case $rc in
    0) summary="No changes: the host matches the manifests." ;;
    2) summary="Changes: applying these manifests changes the host (plan above)." ;;
    *) echo "plan.sh: ipvlanctl plan failed (exit $rc)" >&2; exit 1 ;;
esac
echo "$summary"

if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    {
        echo "### ipvlan-reconciler plan"
        echo
        echo "$summary"
        echo
        echo '```'
        cat "$out"
        echo '```'
    } >>"$GITHUB_STEP_SUMMARY"
fi

if [ "$rc" -eq 2 ] && [ "${FAIL_ON_CHANGES:-0}" = "1" ]; then
    exit 2
fi
exit 0
