"""One handler per object kind: how it is created, deleted and updated (how it is observed:
``kernel.observe``).

The pure side of each kind (identity, diff rules, description) is in
``reconciler.objects``; this is the kernel side. Handlers never decide what to
do -- the plan did -- they only translate one action into kernel requests.
Requests are queued on a socket in a numbered *phase*; the executor
(``reconciler.kernel.apply``) sends every queued request of phase 0 for all
sockets, collects the ACKs, then phase 1, and so on. That keeps the kernel's
ordering rules (a link must exist before its address) while pipelining
thousands of requests.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Dict, Optional

from ..errors import KernelError
from ..model import MacvlanMode
from ..objects import (
    MARKER,
    RTPROT,
    AccessLink,
    AccessRoute,
    Address,
    Endpoint,
    ExportRoute,
    HostsFile,
    Kind,
    KObject,
    Netns,
    Route,
    Sysctl,
)
from . import netlink as nl
from .ctx import Ctx


def _fam(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


# =================================================================================================
# actions
# =================================================================================================
class Handler:
    kind: Kind

    def create(self, ctx: "Ctx", obj: KObject, phase: int = 0) -> None:
        raise NotImplementedError

    def delete(self, ctx: "Ctx", obj: KObject, phase: int = 0) -> None:
        raise NotImplementedError

    def update(self, ctx: "Ctx", before: KObject, after: KObject) -> None:
        raise NotImplementedError

    def replace(self, ctx: "Ctx", before: KObject, after: KObject) -> None:
        self.delete(ctx, before, phase=0)
        self.create(ctx, after, phase=1)


def _link_flags_alias(name: str, up: Optional[bool], alias: Optional[str], index: int = 0) -> bytearray:
    body = nl.ifinfo(index=index, flags=nl.IFF_UP if up else 0, change=nl.IFF_UP if up is not None else 0)
    if not index:
        body += nl.attr_str(nl.IFLA_IFNAME, name)
    if alias is not None:
        body += nl.attr_str(nl.IFLA_IFALIAS, alias)
    return nl.request(nl.RTM_NEWLINK, 0, body)


class HostLinkHandler(Handler):
    """VLAN and dummy links in the host namespace (always addressed by name)."""

    info_kind = ""

    def info_data(self, obj: KObject) -> bytes:
        return b""

    def create(self, ctx: "Ctx", obj: KObject, phase: int = 0) -> None:
        body = nl.ifinfo(flags=nl.IFF_UP, change=nl.IFF_UP) + nl.attr_str(nl.IFLA_IFNAME, obj.name)
        lower = getattr(obj, "link", None)
        if lower is not None:
            body += nl.attr_u32(nl.IFLA_LINK, ctx.host_index(lower))
        info = nl.attr_str(nl.IFLA_INFO_KIND, self.info_kind)
        data = self.info_data(obj)
        if data:
            info += nl.nested(nl.IFLA_INFO_DATA, data)
        body += nl.nested(nl.IFLA_LINKINFO, info)
        what = f"{self.kind.label} {obj.name}"
        ctx.queue(ctx.kernel.host, phase, nl.request(nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, body), "create", what)
        # the kernel ignores IFLA_IFALIAS on creation: mark it right after, in the next phase,
        # which is sent only when every create of this one succeeded -- by name, so after a
        # create refused with EEXIST it would mark someone else's link as ours
        ctx.queue(ctx.kernel.host, phase + 1, _link_flags_alias(obj.name, None, MARKER), "mark", what)
        ctx.host_links_changed = True

    def delete(self, ctx: "Ctx", obj: KObject, phase: int = 0) -> None:
        body = nl.ifinfo() + nl.attr_str(nl.IFLA_IFNAME, obj.name)
        ctx.queue(ctx.kernel.host, phase, nl.request(nl.RTM_DELLINK, 0, body), "delete", f"{self.kind.label} {obj.name}",
                  ok=(errno.ENODEV,))
        ctx.host_links_changed = True

    def update(self, ctx: "Ctx", before: KObject, after: KObject) -> None:
        alias = MARKER if getattr(after, "marked", True) else None
        ctx.queue(ctx.kernel.host, 0, _link_flags_alias(after.name, after.up, alias), "update", f"{self.kind.label} {after.name}")


class VlanHandler(HostLinkHandler):
    kind = Kind.VLAN
    info_kind = "vlan"

    def info_data(self, obj: KObject) -> bytes:
        return nl.attr_u16(nl.IFLA_VLAN_ID, obj.vid)


class DummyHandler(HostLinkHandler):
    kind = Kind.DUMMY
    info_kind = "dummy"


class NetnsHandler(Handler):
    kind = Kind.NETNS

    def create(self, ctx: "Ctx", obj: Netns, phase: int = 0) -> None:
        sock = ctx.kernel.create_netns(obj.name)
        ctx.new_netns.add(obj.name)
        # lo up and our marker on it, in one request
        ctx.queue(sock, phase, _link_flags_alias("lo", True, MARKER, index=1), "bring up lo in", f"namespace {obj.name}")

    def delete(self, ctx: "Ctx", obj: Netns, phase: int = 0) -> None:
        ctx.kernel.delete_netns(obj.name)

    def update(self, ctx: "Ctx", before: Netns, after: Netns) -> None:
        sock = ctx.kernel.ns_socket(after.name)
        ctx.queue(sock, 0, _link_flags_alias("lo", True, MARKER, index=1), "update lo in", f"namespace {after.name}")

    def replace(self, ctx: "Ctx", before: Netns, after: Netns) -> None:
        self.delete(ctx, before)
        self.create(ctx, after)


class EndpointHandler(Handler):
    """ipvlan links: created through the host socket straight into the namespace
    (IFLA_NET_NS_FD, with the ifindex chosen by us so no lookup is needed), then
    marked through the namespace's socket."""

    kind = Kind.ENDPOINT

    def create(self, ctx: "Ctx", obj: Endpoint, phase: int = 0) -> None:
        index = ctx.alloc_ifindex(obj.ns, obj.ifname)
        fd = ctx.ns_fd(obj.ns)
        body = endpoint_request_body(obj, index, ctx.host_index(obj.parent), fd)
        what = f"endpoint {obj.ns}/{obj.ifname} on {obj.parent}"
        ctx.queue(ctx.kernel.host, phase, nl.request(nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, body), "create", what)
        ctx.queue(ctx.ns_socket(obj.ns), phase + 1, _link_flags_alias(obj.ifname, None, obj.alias, index=index), "mark", what)

    def delete(self, ctx: "Ctx", obj: Endpoint, phase: int = 0) -> None:
        index = ctx.ifindex(obj.ns, obj.ifname)
        if index is None:
            return
        ctx.queue(ctx.ns_socket(obj.ns), phase, nl.request(nl.RTM_DELLINK, 0, nl.ifinfo(index=index)), "delete",
                  f"endpoint {obj.ns}/{obj.ifname}", ok=(errno.ENODEV,))
        ctx.forget_ifindex(obj.ns, obj.ifname)

    def update(self, ctx: "Ctx", before: Endpoint, after: Endpoint) -> None:
        index = ctx.ifindex(after.ns, after.ifname)
        ctx.queue(ctx.ns_socket(after.ns), 0, _link_flags_alias(after.ifname, after.up, after.alias, index=index or 0),
                  "update", f"endpoint {after.ns}/{after.ifname}")


def endpoint_request_body(obj: Endpoint, index: int, parent_index: int, ns_fd: Optional[int]) -> bytes:
    """The RTM_NEWLINK body creating ``obj``: an ipvlan link (mode, flags) or a macvlan link
    (IFLA_MACVLAN_MODE, and IFLA_ADDRESS unless passthru), in the namespace ``ns_fd``
    (None: where the socket is, as the host legs of SPEC 2.3 host access are)."""
    if obj.driver == "macvlan":
        data = nl.attr_u32(nl.IFLA_MACVLAN_MODE, MacvlanMode(obj.macvlan_mode).kernel)
        info = nl.attr_str(nl.IFLA_INFO_KIND, "macvlan") + nl.nested(nl.IFLA_INFO_DATA, data)
    else:
        data = nl.attr_u16(nl.IFLA_IPVLAN_MODE, obj.mode.kernel) + nl.attr_u16(nl.IFLA_IPVLAN_FLAGS, obj.flag.kernel)
        info = nl.attr_str(nl.IFLA_INFO_KIND, "ipvlan") + nl.nested(nl.IFLA_INFO_DATA, data)
    body = (
        nl.ifinfo(index=index, flags=nl.IFF_UP if obj.up else 0, change=nl.IFF_UP)
        + nl.attr_str(nl.IFLA_IFNAME, obj.ifname)
        + nl.attr_u32(nl.IFLA_LINK, parent_index)
    )
    if obj.driver == "macvlan" and obj.mac:
        body += nl.attr_mac(nl.IFLA_ADDRESS, obj.mac)
    if ns_fd is not None:
        body += nl.attr_u32(nl.IFLA_NET_NS_FD, ns_fd)
    return body + nl.nested(nl.IFLA_LINKINFO, info)


class AccessLinkHandler(Handler):
    """SPEC 2.3 host access links, in the host namespace: created with an ifindex we
    choose (so its addresses go in the same stage), marked, addressed; their addresses
    are changed in place."""

    kind = Kind.ACCESS_LINK

    def _addr(self, msg_type: int, flags: int, index: int, cidr: str) -> bytearray:
        iface = ipaddress.ip_interface(cidr)
        return nl.addr_request(msg_type, flags, index, _fam(iface.version), iface.ip.packed, iface.network.prefixlen)

    def create(self, ctx: "Ctx", obj: AccessLink, phase: int = 0) -> None:
        index = max(ctx.host_links.values(), default=1) + 1
        for used in ctx.ns_next_index.values():  # indices handed out to endpoints this run
            index = max(index, used)
        ctx.host_links[obj.name] = index
        body = endpoint_request_body(obj, index, ctx.host_index(obj.parent), None)
        what = f"host access link {obj.name} on {obj.parent}"
        ctx.queue(ctx.kernel.host, phase, nl.request(nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, body), "create", what)
        ctx.queue(ctx.kernel.host, phase + 1, _link_flags_alias(obj.name, None, obj.alias, index=index), "mark", what)
        for cidr in obj.addresses:
            ctx.queue(ctx.kernel.host, phase + 1, self._addr(nl.RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_EXCL, index, cidr),
                      "add address", f"{obj.name} {cidr}")
        ctx.host_links_changed = True

    def delete(self, ctx: "Ctx", obj: AccessLink, phase: int = 0) -> None:
        body = nl.ifinfo() + nl.attr_str(nl.IFLA_IFNAME, obj.name)
        ctx.queue(ctx.kernel.host, phase, nl.request(nl.RTM_DELLINK, 0, body), "delete", f"host access link {obj.name}",
                  ok=(errno.ENODEV,))
        ctx.host_links.pop(obj.name, None)
        ctx.host_links_changed = True

    def update(self, ctx: "Ctx", before: AccessLink, after: AccessLink) -> None:
        index = ctx.host_index(after.name)
        if (before.up, before.marked) != (after.up, after.marked):
            ctx.queue(ctx.kernel.host, 0, _link_flags_alias(after.name, after.up, after.alias, index=index),
                      "update", f"host access link {after.name}")
        for cidr in sorted(set(before.addresses) - set(after.addresses)):
            ctx.queue(ctx.kernel.host, 0, self._addr(nl.RTM_DELADDR, 0, index, cidr), "delete address",
                      f"{after.name} {cidr}", ok=(errno.EADDRNOTAVAIL,))
        for cidr in sorted(set(after.addresses) - set(before.addresses)):
            ctx.queue(ctx.kernel.host, 1, self._addr(nl.RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_REPLACE, index, cidr),
                      "add address", f"{after.name} {cidr}")


class AccessRouteHandler(Handler):
    """SPEC 2.3 host routes to this host's containers through their network's access link
    (host namespace, main table, protocol 149, scope link)."""

    kind = Kind.ACCESS_ROUTE

    def _req(self, ctx: "Ctx", obj: AccessRoute, msg_type: int, flags: int) -> Optional[bytearray]:
        index = ctx.host_links.get(obj.ifname)
        if index is None and msg_type == nl.RTM_NEWROUTE:
            raise KernelError("find link", obj.ifname, errno.ENODEV)
        scope = nl.RT_SCOPE_LINK if obj.family == 4 else nl.RT_SCOPE_UNIVERSE
        return nl.route_request(msg_type, flags, _fam(obj.family), obj.dst.network_address.packed, obj.dst.prefixlen,
                                RTPROT, scope, oif=index)

    def create(self, ctx: "Ctx", obj: AccessRoute, phase: int = 0) -> None:
        ctx.queue(ctx.kernel.host, phase, self._req(ctx, obj, nl.RTM_NEWROUTE, nl.NLM_F_CREATE | nl.NLM_F_REPLACE),
                  "add route", obj.describe())

    def delete(self, ctx: "Ctx", obj: AccessRoute, phase: int = 0) -> None:
        ctx.queue(ctx.kernel.host, phase, self._req(ctx, obj, nl.RTM_DELROUTE, 0), "delete route", obj.describe(),
                  ok=(errno.ESRCH, errno.ENODEV))

    def update(self, ctx: "Ctx", before: AccessRoute, after: AccessRoute) -> None:
        self.create(ctx, after)


class SysctlHandler(Handler):
    kind = Kind.SYSCTL

    def create(self, ctx: "Ctx", obj: Sysctl, phase: int = 0) -> None:
        ctx.sysctl(obj.ns, f"/proc/sys/net/ipv6/conf/{obj.ifname}/{obj.name}", str(obj.value))

    def delete(self, ctx: "Ctx", obj: Sysctl, phase: int = 0) -> None:
        pass  # goes away with its interface

    def update(self, ctx: "Ctx", before: Sysctl, after: Sysctl) -> None:
        self.create(ctx, after)


class AddressHandler(Handler):
    kind = Kind.ADDRESS

    def _req(self, ctx: "Ctx", obj: Address, msg_type: int, flags: int) -> Optional[bytearray]:
        index = ctx.ifindex(obj.ns, obj.ifname)
        if index is None:
            return None
        a = obj.address
        return nl.addr_request(msg_type, flags, index, _fam(a.version), a.ip.packed, a.network.prefixlen)

    def create(self, ctx: "Ctx", obj: Address, phase: int = 0) -> None:
        req = self._req(ctx, obj, nl.RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_EXCL)
        ctx.queue(ctx.ns_socket(obj.ns), phase, req, "add address", obj.describe())

    def delete(self, ctx: "Ctx", obj: Address, phase: int = 0) -> None:
        req = self._req(ctx, obj, nl.RTM_DELADDR, 0)
        if req is None:
            return
        ctx.queue(ctx.ns_socket(obj.ns), phase, req, "delete address", obj.describe(), ok=(errno.EADDRNOTAVAIL, errno.ENODEV))

    def update(self, ctx: "Ctx", before: Address, after: Address) -> None:  # pragma: no cover
        raise AssertionError("addresses are created or deleted, never updated")


class RouteHandler(Handler):
    kind = Kind.ROUTE

    def _req(self, ctx: "Ctx", obj: Route, msg_type: int, flags: int) -> Optional[bytearray]:
        index = ctx.ifindex(obj.ns, obj.ifname)
        if index is None and msg_type == nl.RTM_NEWROUTE:
            return None
        scope = nl.RT_SCOPE_LINK if (obj.gateway is None and obj.family == 4) else nl.RT_SCOPE_UNIVERSE
        gateway = obj.gateway.packed if obj.gateway is not None else None
        return nl.route_request(msg_type, flags, _fam(obj.family), obj.dst.network_address.packed, obj.dst.prefixlen,
                                RTPROT, scope, gateway=gateway, oif=index)

    def create(self, ctx: "Ctx", obj: Route, phase: int = 0) -> None:
        # REPLACE, not EXCL: the plan may re-create a route the kernel flushed with the
        # link's last address, and if the kernel kept it after all this is still right
        ctx.queue(ctx.ns_socket(obj.ns), phase, self._req(ctx, obj, nl.RTM_NEWROUTE, nl.NLM_F_CREATE | nl.NLM_F_REPLACE),
                  "add route", obj.describe())

    def delete(self, ctx: "Ctx", obj: Route, phase: int = 0) -> None:
        ctx.queue(ctx.ns_socket(obj.ns), phase, self._req(ctx, obj, nl.RTM_DELROUTE, 0), "delete route", obj.describe(),
                  ok=(errno.ESRCH, errno.ENODEV))

    def update(self, ctx: "Ctx", before: Route, after: Route) -> None:
        ctx.queue(ctx.ns_socket(after.ns), 0, self._req(ctx, after, nl.RTM_NEWROUTE, nl.NLM_F_CREATE | nl.NLM_F_REPLACE),
                  "replace route", after.describe())


class ExportHandler(Handler):
    """Host routes in the BGP table of the host namespace (protocol 149 marks them ours)."""

    kind = Kind.EXPORT

    def _req(self, ctx: "Ctx", obj: ExportRoute, msg_type: int, flags: int) -> bytearray:
        oif = ctx.host_index(obj.dev) if msg_type == nl.RTM_NEWROUTE else None
        return nl.route_request(msg_type, flags, _fam(obj.family), obj.dst.network_address.packed, obj.dst.prefixlen,
                                RTPROT, nl.RT_SCOPE_LINK, table=obj.table, oif=oif)

    def create(self, ctx: "Ctx", obj: ExportRoute, phase: int = 0) -> None:
        # REPLACE: a route of ours to the same address (another parent) is taken over
        ctx.queue(ctx.kernel.host, phase, self._req(ctx, obj, nl.RTM_NEWROUTE, nl.NLM_F_CREATE | nl.NLM_F_REPLACE),
                  "add route", f"bgp export {obj.describe()}")

    def delete(self, ctx: "Ctx", obj: ExportRoute, phase: int = 0) -> None:
        ctx.queue(ctx.kernel.host, phase, self._req(ctx, obj, nl.RTM_DELROUTE, 0), "delete route",
                  f"bgp export {obj.describe()}", ok=(errno.ESRCH, errno.ENODEV))

    def update(self, ctx: "Ctx", before: ExportRoute, after: ExportRoute) -> None:
        self.create(ctx, after)


class HostsHandler(Handler):
    kind = Kind.HOSTS

    def create(self, ctx: "Ctx", obj: HostsFile, phase: int = 0) -> None:
        ctx.kernel.write_hosts(obj.ns, obj.content)

    def delete(self, ctx: "Ctx", obj: HostsFile, phase: int = 0) -> None:
        ctx.kernel.delete_hosts(obj.ns)

    def update(self, ctx: "Ctx", before: HostsFile, after: HostsFile) -> None:
        self.create(ctx, after)


HANDLERS: Dict[Kind, Handler] = {
    h.kind: h
    for h in (
        VlanHandler(),
        DummyHandler(),
        NetnsHandler(),
        EndpointHandler(),
        SysctlHandler(),
        AddressHandler(),
        RouteHandler(),
        HostsHandler(),
        ExportHandler(),
        AccessLinkHandler(),
        AccessRouteHandler(),
    )
}
