"""Process-global runtime state: the client of this process (driver or worker), if any."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabric._client import CoreClient

client: CoreClient | None = None
