"""OpenAI's Python SDK, unchanged, against a mochi-serve gateway.

Usage: openai_videos.py BASE_URL API_KEY
Exits non-zero (with the failed assertion) when any call does not behave as the SDK's
contract says. Prints one line per check.
"""

import json
import sys
import urllib.request
import warnings

import openai
from openai import OpenAI

# The SDK marks the Videos API deprecated (Sora's shutdown); the calls are what we serve.
warnings.simplefilter("ignore", DeprecationWarning)

MOCHI = {"steps": 8, "guidance_scale": 4.5}


def check(label, condition, detail=""):
    if not condition:
        raise AssertionError(f"{label}: {detail}")
    print(f"ok  {label}")


def main(base_url, api_key):
    client = OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    models = client.models.list()
    check("models.list names mochi-1-preview", [m.id for m in models.data] == ["mochi-1-preview"])

    video = client.videos.create_and_poll(
        prompt="a red fox running through fresh snow",
        model="mochi-1-preview",
        seconds="1",
        size="848x480",
        extra_body=MOCHI,
        poll_interval_ms=200,
    )
    check("create_and_poll completes", video.status == "completed", video)
    check("progress is 100", video.progress == 100, video.progress)
    check("size and seconds as asked", (video.size, video.seconds) == ("848x480", "1.03"), video)
    check("completed_at after created_at", video.completed_at >= video.created_at, video)
    check("our fields ride along", video.model_extra.get("state") == "succeeded", video.model_extra)

    # The SDK's own poll loop, paced by openai-poll-after-ms.
    second = client.videos.create(prompt="a cat surfing a wave", seconds=1, extra_body=MOCHI)
    check("create answers queued", second.status in ("queued", "in_progress"), second.status)
    second = client.videos.poll(second.id)
    check("poll ends completed", second.status == "completed", second)

    for variant, magic in [("video", b"ftyp"), ("thumbnail", b"\xff\xd8\xff"), ("spritesheet", b"\xff\xd8\xff")]:
        content = client.videos.download_content(video.id, variant=variant)
        data = content.read()
        found = data[4:8] if variant == "video" else data[:3]
        check(f"download_content {variant}", found == magic and len(data) > 100, (len(data), data[:12]))

    remix = client.videos.remix(video.id, prompt="a red fox running through fresh snow at night")
    check("remix names its source", remix.remixed_from_video_id == video.id, remix)
    check("remix keeps the seed", remix.model_extra["spec"]["seed"] == video.model_extra["seed"], remix.model_extra)
    remix = client.videos.poll(remix.id, poll_interval_ms=200)
    check("remix completes", remix.status == "completed", remix)

    first = client.videos.list(limit=2)
    check("list page one", len(first.data) == 2 and first.has_more, first)
    check("newest first", first.data[0].id == remix.id, [v.id for v in first.data])
    page_two = first.get_next_page()
    check("list page two", len(page_two.data) == 1 and not page_two.has_more, page_two)
    every = [v.id for v in client.videos.list(limit=1)]
    check("auto-paging sees every job once", sorted(every) == sorted([video.id, second.id, remix.id]), every)

    deleted = client.videos.delete(second.id)
    check("delete", deleted.deleted and deleted.id == second.id and deleted.object == "video.deleted", deleted)
    try:
        client.videos.retrieve(second.id)
        check("a deleted video is gone", False, "retrieve succeeded")
    except openai.NotFoundError as error:
        check("a deleted video is gone", error.status_code == 404, error)

    try:
        client.videos.create(prompt="x", model="sora-2")
        check("another model is refused", False, "create succeeded")
    except openai.NotFoundError as error:
        check("another model is refused", error.code == "model_not_found" and "mochi-1-preview" in str(error), error)
    try:
        client.videos.create(prompt="x", seconds="forever")
        check("bad seconds are refused", False, "create succeeded")
    except openai.UnprocessableEntityError as error:
        check("bad seconds are refused", error.param == "seconds" and error.type == "invalid_request_error", error)
    try:
        OpenAI(base_url=base_url + "/v1", api_key="mk_live_wrong", max_retries=0).videos.list()
        check("a wrong key is refused", False, "list succeeded")
    except openai.AuthenticationError as error:
        check("a wrong key is refused", error.status_code == 401, error)
    events(client, base_url, api_key)
    print("all checks passed")


def open_stream(url, headers):
    """A text/event-stream response (the standard library's HTTP client: no dependency)."""
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)


def read_events(response):
    """Yields (event, id, data) from a text/event-stream response."""
    event, ident, data = None, None, []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if event is not None:
                yield event, ident, json.loads("\n".join(data)) if data else None
            event, ident, data = None, None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("id:"):
            ident = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def events(client, base_url, api_key):
    """Our extension: live progress over SSE, every step once across a reconnection that
    resumes by Last-Event-ID."""
    steps = 12
    job = client.videos.create(prompt="a heron taking off", seconds="4", extra_body={"steps": steps})
    url = f"{base_url}/v1/videos/{job.id}/events"
    headers = {"Authorization": f"Bearer {api_key}"}
    first, last_id = [], None
    with open_stream(url, headers) as response:
        check("events stream opens", response.status == 200, response.status)
        for event, ident, data in read_events(response):
            first.append((event, data))
            last_id = ident
            if event == "progress" and data["step"] == 4:
                break  # the client goes away mid-job
    with open_stream(url, {**headers, "Last-Event-ID": last_id}) as response:
        second = [(event, data) for event, _, data in read_events(response)]
    seen = first + second
    names = [event for event, _ in seen]
    progress = [data["step"] for event, data in seen if event == "progress"]
    check("every step arrives once, in order, across the reconnection", progress == list(range(1, steps + 1)), progress)
    percents = [data["percent"] for event, data in seen if event == "progress"]
    check("percent rises", percents == sorted(percents) and percents[-1] == 95, percents)
    check("started, decoding, completed", "started" in names and "decoding" in names and names[-1] == "completed", names)
    check("the resumed stream ends with the job", second and second[-1][1]["status"] == "completed", second[-1:])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
