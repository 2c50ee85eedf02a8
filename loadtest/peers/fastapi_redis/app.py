"""The seed-shaped submit path that mochi-serve replaces, for the capacity comparison.

POST /v1/videos validates the body with pydantic, builds a job record and LPUSHes it onto a
Redis list that workers would BRPOP from, then answers 202 with the job. What it guarantees
depends on the Redis it talks to: with `appendonly yes` and `appendfsync always` (as the
capacity run starts it) an answered job is on disk; with Redis' defaults it is in memory
until the next snapshot, and a crash loses it. It has no authentication, no tenants, no
idempotency keys, no quota or rate limit, no admission check against the GPUs and no
back-pressure: the list grows without bound. Written for loadtest/src/capacity.rs.
"""

import os
import time
import uuid

import redis.asyncio as redis
from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI()
queue = redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


class VideoRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = ""
    num_frames: int = Field(default=31, ge=1, le=301)
    fps: int = Field(default=30, ge=1, le=60)
    width: int = Field(default=848, ge=16, le=1920)
    height: int = Field(default=480, ge=16, le=1920)
    steps: int = Field(default=64, ge=1, le=200)
    guidance_scale: float = Field(default=4.5, ge=1.0, le=20.0)
    seed: int | None = None


@app.post("/v1/videos", status_code=202)
async def create(request: VideoRequest):
    job = {
        "id": str(uuid.uuid4()),
        "object": "video",
        "status": "queued",
        "created_at": int(time.time()),
        "spec": request.model_dump(),
    }
    await queue.lpush("mochi:queue", VideoJob(**job).model_dump_json())
    return job


class VideoJob(BaseModel):
    id: str
    object: str
    status: str
    created_at: int
    spec: dict


@app.get("/healthz")
async def healthz():
    return {"ok": True}
