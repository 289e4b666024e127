"""An application's own launcher, as many deployments start their server: a console script or
`python -m app` whose `main()` calls `uvicorn.run`.

The corpus's uvloop cases are served through a copy of it in the case's directory, run as a
script: outside this project's files, its `main()` is a local file's function that the analysis
counts as the application's code, as it would count a deployment's own `serve.py`. It sits above
the event loop in every stack of the loop thread, and a flag located in it (or anywhere outside
the app) fails the case.

    python serve.py MODULE:APP PORT
"""

from __future__ import annotations

import sys

import uvicorn


def main(argv: list[str]) -> None:
    asgi, port = argv
    uvicorn.run(asgi, host="127.0.0.1", port=int(port), log_level="warning",
                loop="uvloop", http="httptools")


if __name__ == "__main__":
    main(sys.argv[1:])
