"""Fabric: Ray's task, actor and object model for tenants who do not trust each other.

The public API, curated here (a test pins this list). ``import fabric as ray`` ports a Ray
Core program.
"""

from fabric import exceptions as exceptions
from fabric._api import RuntimeContext as RuntimeContext
from fabric._api import available_resources as available_resources
from fabric._api import cancel as cancel
from fabric._api import cluster_resources as cluster_resources
from fabric._api import get as get
from fabric._api import get_actor as get_actor
from fabric._api import get_runtime_context as get_runtime_context
from fabric._api import init as init
from fabric._api import is_initialized as is_initialized
from fabric._api import kill as kill
from fabric._api import nodes as nodes
from fabric._api import put as put
from fabric._api import shutdown as shutdown
from fabric._api import wait as wait
from fabric._refs import ObjectRef as ObjectRef
from fabric._remote import ActorClass as ActorClass
from fabric._remote import ActorHandle as ActorHandle
from fabric._remote import RemoteFunction as RemoteFunction
from fabric._remote import method as method
from fabric._remote_decorator import remote as remote

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "RemoteFunction",
    "RuntimeContext",
    "__version__",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
