"""What a caller may see of the cluster view: a tenant sees its own load, never another's."""

from __future__ import annotations

from fabric._bundle_resources import is_other_tenants
from fabric._proto import fabric_pb2 as pb


def only_own(node: pb.NodeInfo, tenant: str) -> None:
    """Reduce a node's load figures to `tenant`'s: another tenant's work is not its business."""
    own = pb.TenantLoad()
    if tenant in node.tenant_load:
        own.CopyFrom(node.tenant_load[tenant])
    node.tenant_load.clear()
    node.tenant_load[tenant].CopyFrom(own)
    node.running_tasks = own.running_tasks
    node.queued_tasks = own.queued_tasks
    node.workers = own.workers
    # Another tenant's placement-group resources name it and its groups.
    for resources in (node.total, node.available):
        for name in [n for n in resources if is_other_tenants(n, tenant)]:
            del resources[name]
