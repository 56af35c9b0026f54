"""`edgert view`: the live video with the model's overlays in a browser, for secondary displays and engineers.

`feed` is the ZeroMQ side (results and previews in, paired display frames and the daemon's liveness out); `server`
serves the page and pushes frames over a WebSocket, newest first; `static/` is the page. Needs `websockets`
(the `view` extra), imported only when a server is made.
"""

from edge_runtime.integrations.view.feed import DisplayFrame, Feed, Pairer
from edge_runtime.integrations.view.server import ViewError, ViewOptions, ViewServer
from edge_runtime.sdk.liveness import Link, LinkStatus, Liveness

__all__ = [
    "DisplayFrame",
    "Feed",
    "Link",
    "LinkStatus",
    "Liveness",
    "Pairer",
    "ViewError",
    "ViewOptions",
    "ViewServer",
]
