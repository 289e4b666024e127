"""A small app whose CPU goes mostly to threads Python does not run: argon2 verifies a
password on four lanes, each a thread of its own C library, while the caller waits (a sync
handler, in the pool); beside it a route sleeping in the pool and one computing on the loop."""

import time

from argon2 import PasswordHasher
from fastapi import FastAPI

app = FastAPI()
hasher = PasswordHasher(parallelism=4)
HASH = hasher.hash("secret")


@app.get("/login")
def login() -> dict[str, bool]:
    return {"ok": hasher.verify(HASH, "secret")}


@app.get("/nap")
def nap() -> dict[str, bool]:
    time.sleep(0.05)
    return {"slept": True}


@app.get("/spin")
async def spin() -> dict[str, int]:
    total = 0
    for i in range(60_000):
        total += i * i
    return {"total": total}
