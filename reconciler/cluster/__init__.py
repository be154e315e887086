"""Cluster mode (SPEC 6): etcd (v3 API, through its JSON gateway) as the fleet's source of truth.

Optional: needs the ``[cluster]`` extra (etcd3gw). Nothing outside this package imports it,
and this package imports etcd3gw only when a store is opened, so the single-host and
file-synced paths never need it.

Modules:
  keys      -- the key layout (docs/cluster.md): names by prefix, never changing meaning
  store     -- a thin transactional client (range, txn, leases) with clear errors
  revision  -- `cluster push`: validate, resolve the block grid, store one revision atomically
  alloc     -- the allocation core a host agent uses: host binding, blocks, addresses, status
  admin     -- `cluster status`, `cluster forget-host` and `cluster rejoin`
  options   -- the etcd TLS / auth options every command that talks to etcd takes
  cli       -- the `ipvlanctl cluster` subcommands
"""
