"""Names shared by the daemon's modules and the CLI (cheap to import)."""

DEFAULT_STATUS_FILE = "/run/ipvlan-reconciler/status.json"

# reconcile results: converged, converged except pending objects, failed (temporary
# error, retried), rejected (permanent error, waits for an edit), bug (retried)
RESULTS = ("converged", "pending", "failed", "rejected", "bug")

# managed_objects{kind}: the desired state being enforced, as an operator counts it
KINDS = ("network", "vlan", "container", "attachment")
