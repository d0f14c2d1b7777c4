"""The S3 server of `make services`: moto's S3 service on its own, served on loopback.

`moto_server` routes every request through a dispatcher that works out which of moto's hundreds of services it is
for (reading the host, the signature and, per request, moto's module folders on disk) and logs a line per
request; on this project's two cores that is a third of the server's time per PUT. Only S3 is needed here, so
this serves moto's S3 application directly, threaded, without the request log. The behaviour is moto's own: the
same S3 handlers and in-memory store answer every request.

Usage: python3 scripts/s3-server.py HOST PORT
"""

import sys

from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import WSGIRequestHandler, run_simple


class Unlogged(WSGIRequestHandler):
    """Errors still go to stderr; a line per request does not."""

    def log_request(self, code="-", size="-"):
        pass


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(host, port, create_backend_app("s3"), threaded=True, request_handler=Unlogged)


if __name__ == "__main__":
    main()
