"""A small app whose routes spend their time in known ways: sleeping in a pool thread,
computing on the event loop, hashing in C code that releases the GIL (in a sync handler, and
handed to a pool thread by an async one), and doing nothing."""

import asyncio
import hashlib
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/nap")
def nap() -> dict[str, bool]:
    time.sleep(0.05)  # NAP_LINE: off-CPU in a pool thread
    return {"slept": True}


@app.get("/spin")
async def spin() -> dict[str, int]:
    total = 0
    for i in range(60_000):  # SPIN_LINE: pure Python on the loop
        total += i * i
    return {"total": total}


@app.get("/hash")
def hash_password() -> dict[str, int]:
    digest = hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 20_000)  # HASH_LINE: C code
    return {"n": len(digest)}


@app.get("/offload")
async def offload() -> dict[str, int]:
    # No frame of the app's in the pool thread: C code called by the executor's worker.
    digest = await asyncio.to_thread(hashlib.pbkdf2_hmac, "sha256", b"pw", b"salt", 150_000)
    return {"n": len(digest)}


@app.get("/")
async def root() -> dict[str, str]:
    return {"ok": "yes"}
