"""The S3 server of `make services`: moto's S3 service on its own, served by waitress on loopback.

`moto_server` routes every request through a dispatcher that works out which of moto's hundreds of services it is
for (reading the host, the signature and, per request, moto's module folders on disk) and logs a line per
request; on this project's two cores that is a third of the server's time per PUT. Only S3 is needed here, so
this serves moto's S3 application directly, without the request log.

It is served by waitress, not by werkzeug's development server: since werkzeug 2.1 that server answers every
request with `Connection: close`, so each request paid for a new TCP connection and a new thread (half of the
server's time on 10,000 small PUTs). waitress keeps connections open and answers them from a fixed pool of
threads. The behaviour is moto's own: the same S3 handlers and in-memory store answer every request.

Usage: python3 scripts/s3-server.py HOST PORT
"""

import logging
import sys

import waitress
from moto.moto_server.werkzeug_app import create_backend_app


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    host, port = sys.argv[1], int(sys.argv[2])
    # With every thread busy, waitress logs a warning per queued request: a line for most requests of a large sync.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    try:
        serve(host, port)
    except OSError as err:
        sys.exit(f"s3-server: cannot listen on {host}:{port}: {err.strerror}")


def serve(host, port):
    # The worker keeps up to 64 uploads in flight per store; several workers and tests share this server.
    waitress.serve(
        create_backend_app("s3"),
        host=host,
        port=port,
        threads=8,
        connection_limit=1000,
        channel_timeout=300,
        # Bodies up to moto's own limit for one PUT; waitress's default caps a request at 1 GiB.
        max_request_body_size=5 << 30,
        ident="moto-waitress",
        _quiet=True,
    )


if __name__ == "__main__":
    main()
