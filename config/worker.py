"""The gunicorn worker class: gevent's, with two gateway manners.

1. Requests gunicorn refuses before the app runs (a malformed request line or
   header, headers too large) get the gateway's JSON error body, not
   gunicorn's HTML page: every non-2xx answer is JSON.
2. A client dropped because it took no bytes for ``WRITE_TIMEOUT_S`` is one
   info line, not a traceback: a slow client is not a server error.
3. A request whose body could not be read to its end (the app's
   ``BODY_TIMEOUT_S``) is answered with ``Connection: close``: gunicorn closes
   such a connection anyway, now the answer says so.

Imported by the master (``worker_class``): only gunicorn and the standard
library here, never the app or an SDK.
"""

import errno
import json

from gunicorn import util
from gunicorn.http.message import Request
from gunicorn.workers.ggevent import GeventWorker

# What gunicorn's own refusals become: status -> (code, message).
_REFUSALS = {
    400: ("invalid_request", "the HTTP request is malformed"),
    403: ("invalid_request", "the request was refused by the server"),
    413: ("payload_too_large", "the request is too large"),
    414: ("payload_too_large", "the request line is too long"),
    417: ("invalid_request", "the expectation cannot be met"),
    431: ("payload_too_large", "the request headers are too large"),
    501: ("invalid_request", "the transfer coding is not supported"),
}


def write_json_error(sock, status_int, reason, mesg):  # noqa: ANN001, ANN201
    """gunicorn's ``util.write_error``, answering with the gateway's error body."""
    code, message = _REFUSALS.get(status_int, ("internal_error", "the server failed"))
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


_request_should_close = Request.should_close


def should_close(request):  # noqa: ANN001, ANN201
    """gunicorn's ``Request.should_close``, also true once reading the body failed."""
    body = getattr(request, "body", None)
    return getattr(body, "failed", False) is True or _request_should_close(request)


class GatewayWorker(GeventWorker):
    def init_process(self) -> None:
        util.write_error = write_json_error  # used by Worker.handle_error
        Request.should_close = should_close
        super().init_process()

    def handle_request(self, listener_name, req, sock, addr):  # noqa: ANN001, ANN201
        try:
            super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # The feed has put the socket's own timeout back by now: name the setting.
            self.log.info("dropped a client that accepted no bytes within WRITE_TIMEOUT_S: "
                          "%s %s", req.method, req.path)
            # Ends the connection like a client that went away, without a traceback.
            raise BrokenPipeError(errno.EPIPE, "client too slow") from None
