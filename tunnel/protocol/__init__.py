"""The tunnel protocol, sans-I/O: frame codec, message payloads, connection state machine.

Nothing in this package imports asyncio, sockets or an HTTP library (a test checks it).
"""

from tunnel.protocol.connection import PROTOCOL_VERSION, SUPPORTED_VERSIONS, Connection, Role, Settings
from tunnel.protocol.events import *  # noqa: F401,F403
from tunnel.protocol.frames import ErrorCode, FrameType
from tunnel.protocol.messages import RequestHead, ResponseHead

__all__ = ["PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "Connection", "Role", "Settings", "ErrorCode",
           "FrameType", "RequestHead", "ResponseHead"]
