"""A tiny function app that drives the dev host tests (HTTP, queues, outputs, timers, async)."""
import asyncio
import json
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

# What the functions saw, for the tests to inspect through DevHost.module.
SEEN: dict[str, list] = {"work": [], "work_failed": [], "tick": [], "slow": [], "loops": []}
_lock = threading.Lock()


def _see(kind: str, item) -> None:
    with _lock:
        SEEN[kind].append(item)


@app.route(route="echo/{id}/{name?}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    payload = {"method": req.method, "route_params": dict(req.route_params), "params": dict(req.params),
               "body": req.get_body().decode("utf-8", "replace"), "url": req.url,
               "x_test": req.headers.get("x-test")}
    return func.HttpResponse(json.dumps(payload), mimetype="application/json",
                             headers={"X-Echo": "1"}, status_code=200)


@app.route(route="secure", methods=["GET"])        # FUNCTION level, from the app default
def secure(req: func.HttpRequest) -> str:
    return "secret"


@app.route(route="enqueue", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@app.queue_output(arg_name="out", queue_name="%RAW_QUEUE%", connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
    count = int(req.params.get("n", "1"))
    body = req.get_body().decode("utf-8")
    out.set(body if count == 1 else [f"{body}-{i}" for i in range(count)])
    return func.HttpResponse(status_code=202)


@app.route(route="loop", auth_level=func.AuthLevel.ANONYMOUS)
async def loop_check(req: func.HttpRequest) -> func.HttpResponse:
    loop = asyncio.get_running_loop()
    state = globals().setdefault("_LOOP_STATE", {"loop": loop, "queue": asyncio.Queue()})
    if state["loop"] is not loop:
        raise RuntimeError("a different event loop than on the first invocation")
    await state["queue"].put(1)          # a loop-bound object created on an earlier invocation
    together = int(req.params.get("together", "0"))
    if together:
        # Finishes only once `together` invocations are in flight at the same moment: proof that
        # they run concurrently on this loop, whatever the machine's speed (no timing involved).
        state.setdefault("in_flight", 0)
        state["in_flight"] += 1
        state.setdefault("all_in", asyncio.Event())
        if state["in_flight"] >= together:
            state["all_in"].set()
        try:
            await asyncio.wait_for(state["all_in"].wait(), 30)
        except asyncio.TimeoutError:
            return func.HttpResponse(f"only {state['in_flight']} of {together} ran at once", status_code=500)
    _see("loops", id(loop))
    return func.HttpResponse(json.dumps({"loop": id(loop), "thread": threading.current_thread().name}),
                             mimetype="application/json")


@app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="done", queue_name="%DONE_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage, done: func.Out[str]) -> None:
    body = msg.get_body().decode("utf-8")
    _see("work", {"id": msg.id, "body": body, "dequeue_count": msg.dequeue_count})
    if body.startswith("fail"):
        raise ValueError("asked to fail")
    done.set(f"done:{body}")


@app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%-poison", connection="AzureWebJobsStorage")
def work_failed(msg: func.QueueMessage) -> None:
    _see("work_failed", {"body": msg.get_body().decode("utf-8"), "dequeue_count": msg.dequeue_count})


@app.queue_trigger(arg_name="msg", queue_name="%SLOW_QUEUE%", connection="AzureWebJobsStorage")
async def slow(msg: func.QueueMessage) -> None:
    _see("slow", {"id": msg.id, "dequeue_count": msg.dequeue_count, "start": time.monotonic()})
    await asyncio.sleep(float(msg.get_body().decode("utf-8")))


@app.timer_trigger(arg_name="timer", schedule="%TICK_SCHEDULE%", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    _see("tick", {"past_due": timer.past_due})
